"""`pih advise`: the layer-wise prediction, its evidence, --verify, n = 3 regret, spec errors, JSON and report.

One runner (model, calibration and evaluation windows) is shared by the module so the corpus is tokenized once.
"""

import json

import numpy as np
import pytest

from pih import PihError, Prune, Quantize
from pih.cli import main
from pih.commands.advise import methods_from_args, parse_prune, parse_quantize

P = Prune(0.6, criterion="magnitude")
Q = Quantize(3, symmetric=False)  # RTN, asymmetric per channel
SMALL = dict(seqlen=64, calibration_size=8, eval_tokens=256, verify_tokens=1024, curve_bits=(2, 3, 4, 8))


@pytest.fixture(scope="module")
def cfg_of(tiny_folder, tiny_source, cache, corpus_name):
    from pih.bridge.advise import AdviseConfig

    def make(methods, **over):
        kw = dict(model=tiny_source, methods=tuple(methods), eval=corpus_name, calibration=corpus_name, cache=cache,
                  **SMALL)
        kw.update(over)
        return AdviseConfig(**kw)

    return make


@pytest.fixture(scope="module")
def runner(cfg_of):
    from pih.bridge.advise import make_runner

    return make_runner(cfg_of((P, Q)), progress=False)


@pytest.fixture(scope="module")
def pair(cfg_of, runner):
    from pih.bridge.advise import advise

    return advise(cfg_of((P, Q), layer_fraction=1.0), verify=True, progress=False, runner=runner)


# -- spec syntax -----------------------------------------------------------------------------------------------
def test_spec_parsing():
    assert parse_prune("sparsegpt:0.5") == Prune(0.5, criterion="sparsegpt")
    assert parse_prune("wanda:2:4") == Prune(0.5, criterion="wanda", structure="2:4")
    assert parse_quantize("gptq:4") == Quantize(4, symmetric=False, update="gptq")
    assert parse_quantize("rtn:4:g128") == Quantize(4, group=128, symmetric=False)
    assert parse_quantize("rtn:3:sym:mse") == Quantize(3, symmetric=True, scale="mse")
    for bad, match in [("sparsegpt", "sparsegpt:RATIO"), ("loss:0.5", "unknown prune method"),
                       ("wanda:x", "numbers"), ("wanda:1.5", "ratio"), ("wanda:4:2", "0 < N < M")]:
        with pytest.raises(PihError, match=match):
            parse_prune(bad)
    for bad, match in [("gptq", "bit width"), ("awq:4", "known: rtn, gptq"), ("gptq:four", "not an integer"),
                       ("rtn:4:g0x", "unknown option"), ("rtn:0", "bit width"), ("gptq:4:stochastic", "rtn only")]:
        with pytest.raises(PihError, match=match):
            parse_quantize(bad)


def test_method_count_errors():
    class A:
        prune, quantize = ["wanda:0.5"], []

    with pytest.raises(PihError, match="at least two methods"):
        methods_from_args(A)
    A.prune, A.quantize = ["wanda:0.5", "magnitude:0.3", "sparsegpt:0.6"], ["rtn:4", "gptq:3"]
    with pytest.raises(PihError, match="at most 4"):
        methods_from_args(A)
    from pih.bridge.advise import check_methods

    with pytest.raises(PihError, match="given twice"):
        check_methods((P, P))
    with pytest.raises(PihError, match="block removal"):
        check_methods((Prune(0.25, criterion="loss", structure="block"), Q))


def test_cli_errors(capsys, tmp_path, tiny_source):
    assert main(["advise", tiny_source, "--prune", "wanda:0.5"]) == 2
    assert "at least two methods" in capsys.readouterr().err
    assert main(["advise", tiny_source, "--prune", "wanda:2", "--quantize", "rtn:4"]) == 2
    assert "--prune='wanda:2'" in capsys.readouterr().err
    assert main(["advise", str(tmp_path / "nope"), "--prune", "wanda:0.5", "--quantize", "rtn:4"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["advise", tiny_source, "--prune", "wanda:0.5", "--quantize", "rtn:4", "--model-seed", "-1"]) == 2
    assert "--model-seed" in capsys.readouterr().err


def test_shape_errors(cfg_of, runner):
    from pih.bridge.advise import advise

    with pytest.raises(PihError, match="does not divide"):  # M = 5 divides neither 128 nor 384
        advise(cfg_of((Prune(0.6, criterion="wanda", structure="2:5"), Q)), progress=False, runner=runner)
    with pytest.raises(PihError, match="does not divide"):
        advise(cfg_of((P, Quantize(4, group=100))), progress=False, runner=runner)
    with pytest.raises(PihError, match="layers"):
        advise(cfg_of((P, Q), layer_fraction=1.5), progress=False, runner=runner)
    with pytest.raises(PihError, match="runner"):
        advise(cfg_of((P, Q), seqlen=32), progress=False, runner=runner)


# -- the layer-wise measurement is the engine's own computation -------------------------------------------------
def test_layerwise_matches_engine_on_block0(tiny, calib):
    """q/k/v of block 0 see the same (embedding) inputs in every stage of the engine, so the layer-wise composed
    weights must equal the engine's: the errors computed from the engine's weights agree to float precision."""
    from pih.bridge.advise import _out_err, measure_layerwise
    from pih.bridge.blocks import capture_block_inputs, collect_stats
    from pih.bridge.engine import BridgeSettings, CompressionState, apply_stage
    S = BridgeSettings()
    specs = [Prune(0.5, criterion="sparsegpt"), Quantize(3, symmetric=False, update="gptq")]
    names = [f"{tiny.block_name(0)}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    lw = measure_layerwise(tiny, calib, specs, [(0, 1), (1, 0)], [0, 1], S, seed=0, progress=False, layers=names)
    st = collect_stats(tiny.blocks()[0], capture_block_inputs(tiny, calib, S.batch_size), hessian=True)
    dense = {n: m.weight.detach().clone() for n, m in tiny.blocks()[0].self_attn.named_children()
             if n.endswith("proj")}
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    for order in [(0, 1), (1, 0)]:
        tiny.model.load_state_dict(sd)
        state = CompressionState()
        for k, i in enumerate(order):  # the engine's stages, restricted to the three layers
            apply_stage(tiny, specs[i], state, calib, S, seed=0, stage_index=k, progress=False, layers=set(names))
        for j, p in enumerate(("q_proj", "k_proj", "v_proj")):
            W = getattr(tiny.blocks()[0].self_attn, p).weight.detach()
            e = _out_err(dense[p] - W, st[f"self_attn.{p}"].H)
            assert lw.errors[order][j] == pytest.approx(e, rel=1e-5, abs=1e-9)
    assert lw.layers == names


# -- the prediction and its evidence ----------------------------------------------------------------------------
def test_prediction_sign_is_the_sign_of_the_layer_sums(pair):
    errs = {k: np.asarray(v) for k, v in pair["layers"]["errors"].items()}
    ref = np.asarray(pair["layers"]["ref"])
    w = 1 / ref
    pq = f"{P.label} -> {Q.label}"
    qp = f"{Q.label} -> {P.label}"
    a = float((w * (errs[pq] - errs[qp])).sum())
    assert pair["predicted_A_QP_error"] == pytest.approx(a, rel=1e-9)
    assert pair["predicted_first"] == ("quantize" if a > 0 else "prune")
    assert pair["recommendation"] == (qp if a > 0 else pq)
    # the predicted perplexity difference has the same sign (the error->perplexity map is increasing)
    assert pair["error_to_ppl"]["resolved"] and pair["error_to_ppl"]["slope_log_ppl_per_error"] > 0
    assert np.sign(pair["predicted_A_QP_ppl"]) == np.sign(a)
    assert pair["expected_gain_ppl"] == pytest.approx(abs(pair["predicted_A_QP_ppl"]))
    d = np.asarray(pair["layers"]["diff_runner_up_minus_best"])
    assert d.sum() > 0 and pair["confidence"]["layers_agreeing"] == pytest.approx(np.mean(d > 0))
    assert pair["confidence"]["n_layers"] == len(pair["layers"]["names"]) == pair["measurement"]["layers_total"]


def test_verify_and_a_broken_predictor_is_caught(pair, cfg_of, runner, monkeypatch):
    """Magnitude 60 % x RTN 3 bits: prune-first wins for real (Harma's regime); the layer-wise predictor says so.
    A predictor with the two orders' errors swapped must be reported wrong, with regret = |A|."""
    v = pair["verify"]
    pq, qp = f"{P.label} -> {Q.label}", f"{Q.label} -> {P.label}"
    assert v["A_QP_ppl"] == pytest.approx(v["ppl"][pq] - v["ppl"][qp])
    assert v["A_QP_ppl"] < 0 and v["best"] == pq
    assert v["prediction_right"] and pair["recommendation"] == pq and v["regret_ppl"] == 0
    assert pair["cost"]["ratio_measured"] == pytest.approx(v["seconds"] / pair["cost"]["advise_s"])
    # the trivial baseline (every pruner first) is scored on the same measurement; the regret's scale is the
    # dense perplexity on the verification tokens
    assert v["prune_first"] == pq and v["prune_first_right"] and v["prune_first_regret_ppl"] == 0
    assert v["dense_ppl"] < min(v["ppl"].values()) and v["regret_of_dense"] == 0

    import pih.bridge.advise as adv

    real = adv.measure_layerwise

    def swapped(*a, **k):
        res = real(*a, **k)
        e = res.errors
        e[(0, 1)], e[(1, 0)] = e[(1, 0)], e[(0, 1)]
        return res

    monkeypatch.setattr(adv, "measure_layerwise", swapped)
    broken = adv.advise(cfg_of((P, Q), layer_fraction=1.0), verify=True, progress=False, runner=runner)
    bv = broken["verify"]
    assert broken["recommendation"] == qp
    assert not bv["prediction_right"]
    assert bv["regret_ppl"] == pytest.approx(-v["A_QP_ppl"], rel=1e-6)  # the engine is deterministic
    assert bv["regret_of_dense"] == pytest.approx(bv["regret_ppl"] / bv["dense_ppl"])
    assert bv["dense_ppl"] == pytest.approx(v["dense_ppl"])


def test_three_methods_regret_is_brute_force_gap(cfg_of, runner, tmp_path):
    from pih import Store
    from pih.bridge.advise import advise
    from pih.order import search_orders

    methods = (Prune(0.3, criterion="wanda"), Prune(0.6, criterion="magnitude"), Quantize(3, symmetric=False))
    out = advise(cfg_of(methods), verify=True, progress=False, runner=runner, store=tmp_path / "store")
    assert len(out["orders"]) == 6 and sum(o["predicted_best"] for o in out["orders"]) == 1
    v = out["verify"]
    ppl = v["ppl"]
    assert v["regret_ppl"] == pytest.approx(ppl[out["recommendation"]] - min(ppl.values()))
    assert v["regret_ppl"] >= 0 and v["prediction_right"] == (v["regret_ppl"] == 0)
    from pih.methods import pipeline_label

    search = search_orders(methods, lambda o: -ppl[pipeline_label(o)], progress=False)
    assert pipeline_label(search.best) == v["best"]
    pred = next(o for o in search.scores if pipeline_label(o) == out["recommendation"])
    assert search.scores[search.best] - search.scores[pred] == pytest.approx(v["regret_ppl"])
    assert v["pih_regret_ppl"] == pytest.approx(ppl[out["pih_order"]] - min(ppl.values()))
    pf = f"{methods[0].label} -> {methods[1].label} -> {methods[2].label}"  # the pruners as listed, then Q
    assert v["prune_first"] == pf and v["prune_first_regret_ppl"] == pytest.approx(ppl[pf] - min(ppl.values()))
    # the store holds the few-token points, the layer-wise orders (with per-layer arrays) and the verified orders
    st = Store(tmp_path / "store")
    recs = st.records()
    kinds = [r.point.get("what") or r.point.get("source") for r in recs]
    assert kinds.count("layer-wise order") == 6 and kinds.count("pih advise --verify") == 6
    lw = next(r for r in recs if r.point.get("what") == "layer-wise order")
    assert st.load_arrays(lw)["layer_errors"].shape == (out["measurement"]["layers_used"],)
    prov = lw.provenance
    assert prov.calibration_size == SMALL["calibration_size"] and prov.seqlen == SMALL["seqlen"]
    assert prov.settings["layer_fraction"] == 0.25 and prov.settings["bridge"]["offgrid"] == "requantize"
    assert out["measurement"]["layers_used"] < out["measurement"]["layers_total"]


def test_cli_json_and_report(tiny_source, cache, corpus_name, tmp_path, capsys, runner, monkeypatch):
    import pih.bridge.advise as adv

    monkeypatch.setattr(adv, "make_runner", lambda cfg, progress=True: runner)  # the module's model and data
    rep = tmp_path / "rep"
    rc = main(["advise", tiny_source, "--prune", "magnitude:0.6", "--quantize", "rtn:3", "--cache", cache,
               "--data", corpus_name, "--seqlen", "64", "--calibration-size", "8", "--eval-tokens", "256",
               "--verify-tokens", "1024", "--no-progress", "--report", str(rep), "--format", "json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("recommendation", "expected_gain_ppl", "orders", "confidence", "cer", "pih_order", "pih_agrees",
                "quant_curve", "measurement", "cost", "provenance", "predicted_A_QP_ppl", "store", "report"):
        assert key in out, key
    assert "verify" not in out and "trying_every_order_s" not in out["cost"]
    lo, hi = out["expected_gain_interval_ppl"]  # the predicted gain times the verified measured/predicted ratios
    r0, r1 = out["calibration"]["gain_ratio_interval"]
    assert (lo, hi) == (pytest.approx(out["expected_gain_ppl"] * r0), pytest.approx(out["expected_gain_ppl"] * r1))
    assert out["confidence"]["agreement_level"] in ("high", "medium", "low", "tie")
    assert out["cost"]["trying_every_order_estimate_s"] > 0
    assert {r["method"] for r in out["cer"]} == {P.label, Q.label}
    assert next(r for r in out["cer"] if r["method"] == Q.label)["value"] == pytest.approx(16 / 3)
    for f in ("README.md", "orders.png", "layers.png", "curve.png", "advise.json"):
        assert (rep / f).is_file() and (rep / f).stat().st_size > 0, f
    text = (rep / "README.md").read_text()
    assert "Use:" in text and "ESTIMATED" in text and "How sure" in text
    assert (rep / "store" / "records.jsonl").is_file()


def test_error_to_metric_is_a1_linear_in_log_ppl():
    from pih.bridge.advise import error_to_metric

    f, info = error_to_metric(20.0, [(1.0, 20.0 * np.exp(0.1)), (2.0, 20.0 * np.exp(0.2))])
    assert info["slope_log_ppl_per_error"] == pytest.approx(0.1) and info["r2"] == pytest.approx(1.0)
    assert f(3.0) == (pytest.approx(20.0 * np.exp(0.3)), True) and f(0.5)[1] is False
    f2, info2 = error_to_metric(20.0, [(1.0, 20.0 * np.exp(0.1))], scale=4.0)  # partial model: 4x the layers
    assert f2(1.0)[0] == pytest.approx(20.0 * np.exp(0.4))
    assert not error_to_metric(20.0, [(1.0, 19.0)])[1]["resolved"]


def test_next_curve_bits_brackets_cheaply():
    from pih.bridge.advise import next_curve_bits

    assert next_curve_bits({4: 20.0}, [21.0]) == 3  # the pruner is worse: one bit harsher
    assert next_curve_bits({4: 20.0, 3: 20.5}, [21.0]) == 2
    assert next_curve_bits({4: 20.0, 3: 20.5, 2: 23.0}, [21.0]) is None  # bracketed
    assert next_curve_bits({4: 20.0}, [19.9]) == 8  # milder: jump to twice the bits
    assert next_curve_bits({4: 20.0, 8: 19.95}, [19.9]) is None  # censored "weaker": nothing milder than 8 bits
    assert next_curve_bits({2: 30.0}, [40.0]) == 4  # one point is no curve: add the milder side at the limit
    assert next_curve_bits({4: 20.0}, [20.0]) == 3  # exactly on it: still two points


def test_order_only_skips_the_evaluations(cfg_of, runner, tmp_path):
    from pih.bridge.advise import advise, human_report, write_report

    out = advise(cfg_of((P, Q), evaluate=False), verify=True, progress=False, runner=runner)
    assert out["measurement"]["evaluations"] == 0 and out["cost"]["evals_s"] == 0 and out["cost"]["curve_s"] == 0
    assert out["expected_gain_ppl"] is None and out["pih_order"] is None and out["cer"] == []
    assert out["recommendation"] == out["verify"]["best"]  # magnitude x RTN 3: prune first, as with evaluations
    text = human_report(out)
    assert "not computed" in text
    assert "--order-only" in text and "No quantizer" not in text  # the quantizer is there: the curve was skipped
    # confidence from the shipped calibration (the layer agreement is measured without evaluations too)
    assert out["confidence"]["level"] in ("high", "medium", "low", "uncalibrated", "tie")
    assert out["confidence"]["calibrated"] == out["calibration"]["text"] and out["expected_gain_interval_ppl"] is None
    assert out["model_info"]["family"] == "llama"
    assert out["model_info"]["n_linear_layers"] == out["measurement"]["layers_total"]
    write_report(out, tmp_path / "r")
    assert (tmp_path / "r" / "orders.png").is_file() and not (tmp_path / "r" / "curve.png").exists()
