"""pih compare: the measured grid with its noise floor, the scores, the command, bad input, the real export."""

import json
from pathlib import Path

import numpy as np
import pytest

from pih import PihError, Provenance, Prune, Quantize, Record, Store
from pih.cli import main
from pih.compare import layer_predictions, measured_grid, score

RATIOS, BITS = (0.25, 0.5), (2, 4)
P = [Prune(r, criterion="wanda") for r in RATIOS]
Q = [Quantize(b, symmetric=False) for b in BITS]


def _prov(seed, model="synthetic"):
    return Provenance(backend="torch", model=model, data="text:test", metric="neg_perplexity", seqlen=16,
                      calibration="text:train:random-windows", calibration_size=4, seed=seed,
                      settings={"bridge": {"offgrid": "requantize"}})


def _write(store, A, model="synthetic", orders=("P->Q", "Q->P"), layer_sign=None):
    """Records of both orders with A(Q->P) = A[(p, b)][seed]; M(P first) = -10."""
    st = Store(store)
    for (p, b), per_seed in A.items():
        ps, qs = P[RATIOS.index(p)], Q[BITS.index(b)]
        for seed, a in enumerate(per_seed):
            prov = _prov(seed, model)
            if "P->Q" in orders:
                st.append(Record(prov, (ps, qs), -10.0, {"prune": p, "quant": b, "order": "P->Q"}))
            if "Q->P" in orders:
                arrays = None
                if layer_sign is not None:  # the bridge's per-layer errors: err(P first) - err(Q first) ~ sign
                    arrays = {"layer_err_pq": np.array([2.0, 1.0]),
                              "layer_err_qp": np.array([2.0, 1.0 - layer_sign * a])}
                st.append(Record(prov, (qs, ps), -10.0 + a, {"prune": p, "quant": b, "order": "Q->P"}, {}, arrays))
    return st


def test_noise_floor_classification_on_hand_made_records(tmp_path):
    A = {(0.25, 2): [1.0, 1.2, 0.8], (0.5, 2): [0.1, -0.3, 0.5], (0.25, 4): [-2.0, -2.0, -2.0],
         (0.5, 4): [-0.5, -0.7, -0.6]}
    st = _write(tmp_path / "s", A)
    g = measured_grid(st.records())
    assert g.seeds == [0, 1, 2] and len(g.points) == 4
    by = {(p.prune, p.quant): p for p in g.points}
    assert by[(0.25, 2)].mean == pytest.approx(1.0) and by[(0.25, 2)].noise == pytest.approx(0.4)
    assert by[(0.25, 2)].above()
    assert by[(0.5, 2)].noise == pytest.approx(0.8) and not by[(0.5, 2)].above()  # |0.1| < 2 x 0.4
    assert by[(0.25, 4)].noise == 0 and by[(0.25, 4)].above()
    assert by[(0.5, 4)].noise == pytest.approx(0.2) and by[(0.5, 4)].above()
    pooled = 2 * np.sqrt(np.mean([0.04, 0.16, 0.0, 0.01]))
    assert g.pooled_noise == pytest.approx(pooled)
    nf = g.noise_floor()
    assert (nf["n_above"], nf["n_below"]) == (3, 1)
    # a predictor right everywhere, and one wrong only at the point below the floor: both 100 %
    right = {k: float(np.mean(v)) for k, v in A.items()}
    s = score("right", right, g)
    assert s["sign_agreement"] == 1.0 and (s["n_above_floor"], s["n_below_floor"]) == (3, 1)
    assert s["majority_sign_baseline"] == pytest.approx(2 / 3)  # always "P first": right at 2 of the 3
    wrong_below = {**right, (0.5, 2): -1.0}
    s = score("wrong-below", wrong_below, g)
    assert s["sign_agreement"] == 1.0 and s["failures"] == [] and s["below_floor"][0]["sign_agrees"] is False
    # a wrong sign above the floor is a failure; a prediction of exactly 0 never agrees
    s = score("wrong", {**right, (0.25, 4): 3.0, (0.5, 4): 0.0}, g)
    assert s["sign_agreement"] == pytest.approx(1 / 3)
    assert {(f["prune"], f["quant"]) for f in s["failures"]} == {(0.25, 4), (0.5, 4)}
    # one seed: no floor, every point counts
    g1 = measured_grid([r for r in st.records() if r.provenance.seed == 0])
    assert g1.pooled_noise is None and g1.points[0].noise is None
    s1 = score("right", {k: v[0] for k, v in A.items()}, g1)
    assert s1["n_above_floor"] == 4 and s1["n_below_floor"] == 0


def _tensors(tmp_path):
    rng = np.random.default_rng(1)
    out = {"meta": np.array(json.dumps({"model": "synthetic"}))}
    for name, (o, i) in {"b0.q": (8, 16), "b1.q": (8, 16), "b0.up": (12, 16)}.items():
        out[f"W::{name}"] = rng.standard_normal((o, i)).astype(np.float32)
        X = rng.standard_normal((48, i)) * np.exp(rng.standard_normal(i))  # LLM-like channel scales
        out[f"X::{name}"] = X.astype(np.float32)
    path = tmp_path / "tensors.npz"
    np.savez(path, **out)
    return path


def _store_from_simulation(tmp_path, tensors):
    """A constructed store whose measured A is the simulation's own A1 prediction (x 100) plus seed noise, and one
    point drowned in noise (below its floor)."""
    from sim.predict import predict_grid
    from sim.tensors import load_tensors

    rows = predict_grid(load_tensors(tensors), P, Q, ["A1"], progress=False, options={"offgrid": "requantize"})
    A = {}
    for k, r in enumerate(rows):
        a = 100 * r["A_pred"]
        jitter = [0.0, 0.01 * abs(a), -0.01 * abs(a)]
        if k == 0:
            jitter = [0.0, 50 * abs(a) + 1, -50 * abs(a) - 1]
        A[(r["prune"], r["quant"])] = [a + j for j in jitter]
    assert all(abs(v[0]) > 0 for v in A.values())
    return _write(tmp_path / "store", A, layer_sign=1.0), rows


def _compare(capsys, *argv):
    rc = main(["compare", *map(str, argv), "--no-progress", "--format", "json"])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def test_cli_json_fields_and_a_broken_predictor_is_caught(tmp_path, capsys, monkeypatch):
    tensors = _tensors(tmp_path)
    st, _ = _store_from_simulation(tmp_path, tensors)
    png = tmp_path / "cmp.png"
    rc, out, err = _compare(capsys, st.path, "--tensors", tensors, "--assumptions", "A1", "measured-layers",
                            "--plot", png, "--seed", 0, 1)
    assert rc == 0, err
    assert png.is_file() and png.stat().st_size > 1000
    assert out["seeds"] == [0, 1, 2] and out["noise_floor"]["n_below"] == 1
    res = {r["assumption_set"]: r for r in out["results"]}
    for r in res.values():
        for k in ("assumption_set", "n_points", "sign_agreement", "spearman_rho", "noise_floor"):
            assert k in r
        assert r["n_points"] == 4 and r["n_above_floor"] == 3 and r["n_below_floor"] == 1
    assert res["A1"]["sign_agreement"] == 1.0 and res["A1"]["failures"] == []
    assert out["simulation_seeds"] == [0, 1] and len(out["predictions"]) == 2 * 4
    assert all(len(p["A_pred_seeds"]) == 2 for p in res["A1"]["points"])
    assert res["A1"]["n_prediction_sign_stable"] == 4
    assert res["measured-layers"]["sign_agreement"] == 1.0
    assert out["best"]["assumption_set"] in res

    # a predictor with the orders swapped (P first <-> Q first) is caught by the sign check
    import sim.predict

    real = sim.predict.predict_grid

    def swapped(*a, **k):
        return [{**r, "M_pf": r["M_qf"], "M_qf": r["M_pf"], "A_pred": -r["A_pred"]} for r in real(*a, **k)]

    monkeypatch.setattr(sim.predict, "predict_grid", swapped)
    rc, out, err = _compare(capsys, st.path, "--tensors", tensors, "--assumptions", "A1")
    assert rc == 0, err
    bad = out["results"][0]
    assert bad["sign_agreement"] == 0.0 and len(bad["failures"]) == 3 and bad["spearman_rho"] < 0


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    tensors = _tensors(tmp_path)
    A = {(0.25, 2): [1.0, 1.1], (0.5, 4): [-1.0, -1.2]}
    rc, _, err = _compare(capsys, tmp_path / "nowhere", "--tensors", tensors)
    assert rc == 2 and "no such results store" in err
    half = _write(tmp_path / "half", A, orders=("P->Q",))
    rc, _, err = _compare(capsys, half.path, "--tensors", tensors)
    assert rc == 2 and "both orders" in err
    a = _write(tmp_path / "a", A)
    b = _write(tmp_path / "b", A, model="another")
    rc, _, err = _compare(capsys, a.path, b.path, "--tensors", tensors)
    assert rc == 2 and "different protocols" in err and "another" in err
    rc, _, err = _compare(capsys, a.path, "--tensors", tensors, "--assumptions", "A1", "A9")
    assert rc == 2 and "A9" in err and "unknown assumption set" in err
    rc, _, err = _compare(capsys, a.path, "--tensors", tmp_path / "none.npz", "--assumptions", "A1")
    assert rc == 2 and "--tensors" in err
    rc, _, err = _compare(capsys, a.path, "--assumptions", "measured-layers")
    assert rc == 2 and "per-layer errors" in err
    rc, _, err = _compare(capsys, a.path, "--assumptions", "A1")  # no tensors, and not a tiny model to export
    assert rc == 2 and "--model" in err
    with pytest.raises(PihError, match="both orders"):
        measured_grid([])
    assert layer_predictions(measured_grid(a.records())) == {}


def test_the_bridge_export_feeds_the_simulation(tiny, calib, corpus_name, tmp_path):
    """export_layers' W::/X:: format is what sim reads: every linear layer, its dense inputs, stacked by shape."""
    from pih.bridge.export import export_layers
    from pih.commands.compare import _model_source
    from sim.predict import layer_groups
    from sim.tensors import load_tensors, models_from_tensors

    path = export_layers(tiny, calib, tmp_path / "x.npz", max_tokens=96, meta={"seed": 0})
    t = load_tensors(path)
    models = models_from_tensors(t)
    n_lin = 7 * len(list(tiny.blocks()))
    assert len(models) == n_lin
    for m in models.values():
        assert m.X.shape[1] == m.W.shape[2] and m.X.shape[2] == 96
    groups = layer_groups(t, max_samples=64)
    assert sum(len(n) for n, _ in groups) == n_lin and all(m.X.shape[2] == 64 for _, m in groups)
    assert _model_source(tiny.name, None) == (f"tiny-llama:{corpus_name}:150", 0)


def test_model_seed_lets_the_calibration_seed_vary_alone():
    """[experiment] model_seed: the noise floor's repeated seeds keep the seed-0 model (same protocol)."""
    from pih.bridge.experiment import load_config, parse_config

    raw = {"experiment": {"name": "x", "model": "tiny-llama:kjv", "seed": 2, "model_seed": 0},
           "prune": {"ratios": [0.5]}, "quantize": {"bits": [4]}}
    cfg = parse_config(raw)
    assert (cfg.seed, cfg.model_seed) == (2, 0)
    assert parse_config({**raw, "experiment": {"name": "x", "model": "m"}}).model_seed is None
    with pytest.raises(PihError, match="model_seed"):
        parse_config({**raw, "experiment": {**raw["experiment"], "model_seed": "0"}})
    for name in ("compare_sparsegpt_gptq", "compare_wanda_rtn"):
        cfg = load_config(Path(__file__).parents[2] / "experiments" / f"{name}.toml")
        assert cfg.model_seed == 0 and cfg.seed == 0 and cfg.name == name


# ------------------------------------------------------------------------------------------- store predictors


def _singles(st, m_prune, m_quant, seeds=(0, 1, 2)):
    """Each-alone and dense records: M(P alone) per ratio, M(Q alone) per bit width (the PIH predictor's CERs)."""
    for seed in seeds:
        prov = _prov(seed)
        st.append(Record(prov, (), -9.0, {"order": "dense"}))
        for p, ps in zip(RATIOS, P, strict=True):
            st.append(Record(prov, (ps,), m_prune[p], {"prune": p, "order": "P"}))
        for b, qs in zip(BITS, Q, strict=True):
            st.append(Record(prov, (qs,), m_quant[b], {"quant": b, "order": "Q"}))


def test_store_predictors_baselines_and_qfirst_wins(tmp_path):
    from pih.compare import MAJORITY, PREDICTORS, PRUNE_FIRST

    A = {(0.25, 2): [1.0, 1.1, 0.9], (0.5, 2): [-1.0, -1.1, -0.9], (0.25, 4): [-2.0, -2.1, -1.9],
         (0.5, 4): [-0.5, -0.6, -0.4]}
    g = measured_grid(_write(tmp_path / "s", A).records())
    pf, cost = PREDICTORS[PRUNE_FIRST].predict(g)
    assert set(pf.values()) == {-1.0} and cost == 0.0
    s = score(PRUNE_FIRST, pf, g)
    assert (s["qfirst_wins_right"], s["qfirst_wins_total"]) == (0, 1) and s["sign_agreement"] == 0.75
    # leave-one-out majority: a point's own sign is never used. Make the grid 2 positive, 2 negative: each
    # positive point sees 1 positive and 2 negative others -> predicts prune first, and vice versa
    A2 = {**A, (0.5, 4): [0.5, 0.6, 0.4]}
    g2 = measured_grid(_write(tmp_path / "s2", A2).records())
    loo, _ = PREDICTORS[MAJORITY].predict(g2)
    assert loo[(0.25, 2)] == -1.0 and loo[(0.5, 4)] == -1.0  # positives: the others are 1 pos vs 2 neg
    assert loo[(0.25, 4)] == 1.0 and loo[(0.5, 2)] == 1.0  # negatives: the others are 2 pos vs 1 neg
    assert score(MAJORITY, loo, g2)["sign_agreement"] == 0.0  # no information leaks from the point itself


def test_pih_predictor_is_the_cer_gap_of_the_each_alone_records(tmp_path):
    from pih import analyze_grid
    from pih.compare import PIH_RULE, PREDICTORS

    A = {(0.25, 2): [1.0, 1.1, 0.9], (0.5, 2): [-1.0, -1.1, -0.9], (0.25, 4): [-2.0, -2.1, -1.9],
         (0.5, 4): [-0.5, -0.6, -0.4]}
    st = _write(tmp_path / "s", A)
    # Q alone: -12 at 2 bits (C_Q 8), -10 at 4 bits (C_Q 4); P alone 0.25: -11 (CER 6), 0.5: -13 (stronger than 2
    # bits: censored, placed just beyond C_Q = 8)
    _singles(st, {0.25: -11.0, 0.5: -13.0}, {2: -12.0, 4: -10.0})
    g = measured_grid(st.records())
    pred, _ = PREDICTORS[PIH_RULE].predict(g)
    assert pred[(0.25, 2)] == pytest.approx(6 - 8) and pred[(0.25, 4)] == pytest.approx(6 - 4)
    assert pred[(0.5, 2)] > 0 and pred[(0.5, 2)] == pytest.approx(0.0, abs=1e-5)  # censored "stronger"
    assert pred[(0.5, 4)] == pytest.approx(8 - 4, abs=1e-5)
    rows = {(r.prune.ratio, r.quant.bits): r.gap for r in analyze_grid(st.records()).rows if r.seed == 0}
    assert rows[(0.25, 2)] == pytest.approx(pred[(0.25, 2)])  # one definition of the gap


def test_compare_reports_qfirst_wins_and_cost(tmp_path, capsys):
    A = {(0.25, 2): [1.0, 1.1, 0.9], (0.5, 2): [-1.0, -1.1, -0.9], (0.25, 4): [-2.0, -2.1, -1.9],
         (0.5, 4): [-0.5, -0.6, -0.4]}
    st = _write(tmp_path / "s", A)
    _singles(st, {0.25: -11.0, 0.5: -13.0}, {2: -12.0, 4: -10.0})
    rc = main(["compare", str(st.path), "--predictors", "prune-first", "pih", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    res = {r["assumption_set"]: r for r in out["results"]}
    assert res["prune-first"]["qfirst_wins_total"] == 1 and res["prune-first"]["qfirst_wins_right"] == 0
    assert res["pih"]["cost_seconds"] >= 0 and "measure_seconds" in out["timing"]


def test_compare_pool_reports_each_grid_and_the_pooled_figures(tmp_path, capsys):
    """--pool: every protocol of every store is its own grid; the pooled counts are the grids' sums, the best is
    chosen among the predictors on every grid, and the text shows each grid then the pooled table."""
    from pih.compare import pool_scores

    a = _write(tmp_path / "a", {(0.25, 2): [1.0, 1.1, 0.9], (0.5, 4): [-2.0, -2.1, -1.9]})
    _write(tmp_path / "a", {(0.25, 2): [-1.0, -1.1, -0.9], (0.5, 2): [-3.0, -3.1, -2.9]}, model="other")
    b = _write(tmp_path / "b", {(0.5, 2): [-1.0, -1.1, -0.9], (0.25, 4): [0.5, 0.6, 0.4]}, model="third")
    rc = main(["compare", str(a.path), str(b.path), "--pool", "--predictors", "prune-first", "majority-loo",
               "--format", "json", "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(out["grids"]) == 3 and len({g["protocol"] for g in out["grids"]}) == 3
    pf = out["pooled"]["prune-first"]
    assert (pf["grids"], pf["n_agree"], pf["n_above_floor"]) == (3, 4, 6)
    assert (pf["qfirst_wins_right"], pf["qfirst_wins_total"]) == (0, 2)
    assert (out["pooled"], out["best"]) == pool_scores([(g["results"], g["timing"]["measure_seconds"])
                                                        for g in out["grids"]])
    rc = main(["compare", str(a.path), str(b.path), "--pool", "--predictors", "prune-first", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and text.count("== grid ") == 3 and "pooled over 3 grids:" in text and "4/6" in text
    assert main(["compare", str(a.path), "--pool", "--plot", str(tmp_path / "x.png")]) == 2
    assert "draws one grid" in capsys.readouterr().err


def test_pool_scores_sums_the_grids_and_picks_the_best_on_every_grid():
    from pih.compare import pool_scores

    def row(n, agree, above, win, wins, rho, cost):
        return {"assumption_set": n, "n_agree": agree, "n_above_floor": above, "qfirst_wins_right": win,
                "qfirst_wins_total": wins, "spearman_rho": rho, "cost_seconds": cost}

    grids = [([row("x", 3, 4, 1, 1, 0.5, 2.0), row("y", 4, 4, 0, 1, None, 0.0), row("z", 4, 4, 1, 1, 0.9, 1.0)],
              10.0),
             ([row("x", 2, 2, 0, 0, 0.2, 3.0), row("y", 1, 2, 0, 0, None, 0.0)], 30.0)]
    pooled, best = pool_scores(grids)
    assert pooled["x"] == {"grids": 2, "sign_agreement_above_floor": 5 / 6, "n_agree": 5, "n_above_floor": 6,
                           "qfirst_wins_right": 1, "qfirst_wins_total": 1, "spearman_min_over_grids": 0.2,
                           "cost_ratio": 5.0 / 40.0}
    assert pooled["y"]["spearman_min_over_grids"] is None and pooled["z"]["cost_ratio"] == 0.1
    assert best == "x"  # z is better but ran on one grid only; x and y tie on signs, x calls the win
    assert pool_scores([]) == ({}, None)


def _tiny_pair(tmp_path, tiny, corpus, m_pq, m_qp):
    """A store with one (Wanda 50 %, RTN 2) pair of the tiny model, seed 0: (store, provenance, P, Q)."""
    st = Store(tmp_path / "s")
    prov = Provenance(backend="torch", model=tiny.name, data=f"{corpus.tag}:test", metric="neg_perplexity",
                      seqlen=32, calibration=f"{corpus.tag}:train:random-windows", calibration_size=4, seed=0,
                      settings={"bridge": {"offgrid": "requantize"}})
    p, q = Prune(0.5, criterion="wanda"), Quantize(2, symmetric=False)
    st.append(Record(prov, (p, q), m_pq, {"prune": 0.5, "quant": 2, "order": "P->Q"}))
    st.append(Record(prov, (q, p), m_qp, {"prune": 0.5, "quant": 2, "order": "Q->P"}))
    return st, prov, p, q


def test_advise_layers_predictor_is_advise_measurement_of_both_orders(tiny, tiny_source, corpus, cache, tmp_path,
                                                                       monkeypatch):
    """advise-layers predicts A at (p, b) as Σ err(P first) − Σ err(Q first) over advise's sampled layers, from the
    records' calibration windows: the same numbers advise's own measurement gives (orders not swapped)."""
    from pih.bridge.advise import measure_layerwise, sample_layers
    from pih.bridge.data import calibration_windows, tokenize
    from pih.bridge.settings import BridgeSettings
    from pih.commands.compare import ADVISE_FRACTION, advise_layers

    monkeypatch.setenv("PIH_CACHE", cache)
    st, prov, p, q = _tiny_pair(tmp_path, tiny, corpus, -10.0, -10.5)
    g = measured_grid(st.records())
    pred, cost = advise_layers(g, model=tiny_source, seeds=[0])
    assert set(pred) == {(0.5, 2)} and cost > 0
    calib = calibration_windows(tokenize(tiny.tokenizer, corpus.train), 32, 4, 0,
                                source=f"train split of {corpus.name}")
    lw = measure_layerwise(tiny, calib, [p, q], [(0, 1), (1, 0)], (), BridgeSettings(offgrid="requantize"), seed=0,
                           progress=False, layers=sample_layers(tiny, ADVISE_FRACTION))
    w = 1.0 / lw.ref  # advise's relative layer errors: each divided by the layer's tr(W H Wᵀ)
    expected = float(np.sum(w * lw.errors[(0, 1)]) - np.sum(w * lw.errors[(1, 0)]))
    assert pred[(0.5, 2)] == pytest.approx(expected, rel=1e-6) and expected != 0
    assert pred[(0.5, 2)] != pytest.approx(float(np.sum(lw.errors[(0, 1)]) - np.sum(lw.errors[(1, 0)])), rel=1e-3)


def test_no_simulation_runs_the_store_predictors_and_skips_what_the_store_cannot_feed(tmp_path, capsys):
    A = {(0.25, 2): [1.0, 1.1, 0.9], (0.5, 2): [-1.0, -1.1, -0.9], (0.25, 4): [-2.0, -2.1, -1.9],
         (0.5, 4): [-0.5, -0.6, -0.4]}
    st = _write(tmp_path / "s", A)
    _singles(st, {0.25: -11.0, 0.5: -13.0}, {2: -12.0, 4: -10.0})
    rc = main(["compare", str(st.path), "--no-simulation", "--format", "json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    names = [r["assumption_set"] for r in json.loads(cap.out)["results"]]
    assert names == ["prune-first", "majority-loo", "pih"]  # no per-layer errors, no loadable model: skipped
    assert "advise-layers skipped" in cap.err and not json.loads(cap.out)["tensors"]
    rc = main(["compare", str(st.path), "--no-simulation", "--predictors", "A1"])
    assert rc == 2 and "leaves none" in capsys.readouterr().err


def test_fisher_diag_and_the_fisher_weighted_layer_error(tiny, calib):
    """fisher_diag is the mean squared gradient of each window's mean token loss; with it measure_layerwise scores
    a layer by Σ F ⊙ ΔW²; every parameter's requires_grad is restored."""
    import torch

    from pih.bridge.advise import fisher_diag, measure_layerwise, sample_layers
    from pih.bridge.evaluate import token_losses
    from pih.bridge.settings import BridgeSettings

    layers = sample_layers(tiny, 0.25)[:3]
    before = [p.requires_grad for p in tiny.model.parameters()]
    F = fisher_diag(tiny, calib[:2], layers)
    assert [p.requires_grad for p in tiny.model.parameters()] == before
    w = dict(tiny.model.named_modules())[layers[0]].weight
    flag = w.requires_grad
    manual = torch.zeros_like(w, dtype=torch.float32)
    for x in calib[:2]:
        w.requires_grad_(True)
        (g,) = torch.autograd.grad(token_losses(tiny, x[None]).mean(), [w])
        w.requires_grad_(flag)
        manual += g.float() ** 2
    assert torch.allclose(F[layers[0]], manual / 2, rtol=1e-4, atol=1e-12) and float(F[layers[0]].sum()) > 0
    spec = Quantize(2, symmetric=False)
    lw = measure_layerwise(tiny, calib, [spec], [], (0,), BridgeSettings(), progress=False, layers=layers, fisher=F)
    for i, name in enumerate(lw.layers):
        W0 = dict(tiny.model.named_modules())[name].weight.detach().float()
        dW = W0 - lw.weights[0][name].float()
        assert lw.errors[(0,)][i] == pytest.approx(float((F[name] * dW**2).sum()), rel=1e-5)


def test_output_grad_sq_and_the_loss_weighted_layer_error(tiny, calib):
    """output_grad_sq is, per output channel, the mean over windows of the summed squared gradient of the window's
    mean token loss at the layer's output (checked against autograd.grad on the captured output); with it
    measure_layerwise scores a layer by Σ_o c_o (ΔW H ΔWᵀ)_oo, which a channel-blind error would not give."""
    import torch

    from pih.bridge.advise import _out_err, channel_err, measure_layerwise, output_grad_sq, sample_layers
    from pih.bridge.evaluate import token_losses
    from pih.bridge.settings import BridgeSettings

    layers = sample_layers(tiny, 0.25)[:3]
    before = [p.requires_grad for p in tiny.model.parameters()]
    C = output_grad_sq(tiny, calib[:2], layers)
    assert [p.requires_grad for p in tiny.model.parameters()] == before
    mod = dict(tiny.model.named_modules())[layers[0]]
    manual = 0
    for x in calib[:2]:
        seen = []
        h = mod.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
        w = mod.weight
        w.requires_grad_(True)
        try:
            loss = token_losses(tiny, x[None]).mean()
            (g,) = torch.autograd.grad(loss, [seen[0]])
        finally:
            h.remove()
            w.requires_grad_(False)
        manual = manual + (g.float() ** 2).reshape(-1, g.shape[-1]).sum(0)
    assert torch.allclose(C[layers[0]], manual / 2, rtol=1e-4, atol=1e-14) and float(C[layers[0]].min()) > 0
    assert [p.requires_grad for p in tiny.model.parameters()] == before
    spec = Quantize(2, symmetric=False)
    lw = measure_layerwise(tiny, calib, [spec], [], (0,), BridgeSettings(), progress=False, layers=layers,
                           channel=C)
    plain = measure_layerwise(tiny, calib, [spec], [], (0,), BridgeSettings(), progress=False, layers=layers)
    for i, name in enumerate(lw.layers):
        W0, H, _ = lw.inputs[name]
        dW = (W0 - lw.weights[0][name].float()).double()
        per_out = ((dW @ H.double()) * dW).sum(1)
        assert lw.errors[(0,)][i] == pytest.approx(float((per_out * C[name].double()).sum()), rel=1e-6)
        assert channel_err(dW, H, torch.ones_like(C[name])) == pytest.approx(_out_err(dW, H), rel=1e-9)
    ratio = lw.errors[(0,)] / plain.errors[(0,)]
    assert np.ptp(ratio) / np.mean(ratio) > 1e-3  # the channel weights do change the layers' relative errors
    with pytest.raises(PihError, match="one sensitivity"):
        measure_layerwise(tiny, calib, [spec], [], (0,), BridgeSettings(), progress=False, layers=layers,
                          channel=C, fisher=C)


def test_alone_map_fit_recovers_a_known_map_and_its_fallbacks():
    """fit_alone_map recovers log(ppl/dense) = exp(k_P) (e_P + α e_Q)^c from each-alone points generated by it;
    points that did not raise the perplexity are left out; one method only shares its intercept (α = 1); no
    usable point is a clear error; a decreasing fit falls back to c = 1."""
    import math

    from pih.compare import fit_alone_map

    truth = lambda d: 20.0 * math.exp(0.7 * d ** 0.5)  # noqa: E731
    P_pts = [(e, truth(e)) for e in (0.1, 0.4, 1.0)]
    Q_pts = [(e, truth(3.0 * e)) for e in (0.01, 0.05, 0.2, 0.5)] + [(0.001, 19.0)]  # the last: below dense
    f = fit_alone_map(P_pts, Q_pts, 20.0)
    assert f.params["c"] == pytest.approx(0.5) and f.params["alpha"] == pytest.approx(3.0)
    assert f.params["n_fit"] == 7
    assert f(0.3, 0.1) == pytest.approx(truth(0.3 + 0.3)) and f(0.0, 0.0) == 20.0
    # the order of the parts matters: the same total raw error, priced differently
    assert f(0.1, 0.3) > f(0.3, 0.1)
    g = fit_alone_map(P_pts, [], 20.0)
    assert g.params["alpha"] == 1.0 and g(0.2, 0.2) == pytest.approx(truth(0.4))
    with pytest.raises(PihError, match="nothing to fit"):
        fit_alone_map([(0.1, 19.0)], [(0.2, 20.0)], 20.0)
    h = fit_alone_map([(0.1, 30.0), (1.0, 21.0)], [], 20.0)  # more error, less damage: no increasing fit
    assert h.params["c"] == 1.0


def test_loss_and_alone_map_predictors_from_the_layer_errors(tiny, tiny_source, corpus, cache, tmp_path,
                                                             monkeypatch):
    """loss-layers and alone-map-layers predict from the same sampled layers as advise-layers: loss-layers is
    Σ err(P first) − Σ err(Q first) with the loss-weighted errors; alone-map-layers prices each order's parts
    (the first method alone, then what the second adds) by the map fitted on the seed's each-alone records."""
    from pih.bridge.advise import measure_layerwise, output_grad_sq, sample_layers
    from pih.bridge.data import calibration_windows, tokenize
    from pih.bridge.settings import BridgeSettings
    from pih.commands.compare import ADVISE_FRACTION, alone_map_layers, loss_layers
    from pih.compare import alone_values, fit_alone_map

    monkeypatch.setenv("PIH_CACHE", cache)
    st, prov, p, q = _tiny_pair(tmp_path, tiny, corpus, -30.0, -31.0)
    g = measured_grid(st.records())
    assert alone_map_layers(g, model=tiny_source, seeds=[0])[0] == {}  # no each-alone records: nothing to fit
    st.append(Record(prov, (), -20.0, {"order": "dense"}))
    st.append(Record(prov, (p,), -24.0, {"prune": 0.5, "order": "P"}))
    st.append(Record(prov, (q,), -26.0, {"quant": 2, "order": "Q"}))
    g = measured_grid(st.records())
    calib = calibration_windows(tokenize(tiny.tokenizer, corpus.train), 32, 4, 0,
                                source=f"train split of {corpus.name}")
    layers = sample_layers(tiny, ADVISE_FRACTION)
    s = BridgeSettings(offgrid="requantize")
    lw = measure_layerwise(tiny, calib, [p, q], [(0, 1), (1, 0)], (), s, seed=0, progress=False, layers=layers,
                           channel=output_grad_sq(tiny, calib, layers))
    pred, _ = loss_layers(g, model=tiny_source, seeds=[0])
    assert pred[(0.5, 2)] == pytest.approx(float(np.sum(lw.errors[(0, 1)]) - np.sum(lw.errors[(1, 0)])), rel=1e-6)
    lw = measure_layerwise(tiny, calib, [p, q], [(0, 1), (1, 0), (0,), (1,)], (), s, seed=0, progress=False,
                           layers=layers)
    e = {o: float(np.sum(v)) for o, v in lw.errors.items()}
    dense, pv, qv = alone_values(g.records, 0, [p], [q])
    assert (dense, pv, qv) == (20.0, {0: 24.0}, {0: 26.0})
    f = fit_alone_map([(e[(0,)], 24.0)], [(e[(1,)], 26.0)], 20.0)
    expected = f(e[(0,)], e[(0, 1)] - e[(0,)]) - f(e[(1, 0)] - e[(1,)], e[(1,)])
    pred, _ = alone_map_layers(g, model=tiny_source, seeds=[0])
    assert pred[(0.5, 2)] == pytest.approx(expected, rel=1e-6) and expected != 0


def test_layerwise_predictors_share_one_pass_in_a_comparison(tiny, tiny_source, corpus, cache, tmp_path,
                                                               monkeypatch):
    """While a comparison runs, the four layer-wise predictors compress the sampled layers once and each weighs
    the same compressed weights by its own sensitivity: their predictions equal those each makes alone, and a
    predictor called outside a comparison measures afresh. measure_layerwise's ``sensitivities`` gives the same
    weighted errors as its ``fisher`` and ``channel`` options."""
    import pih.bridge.advise as adv
    from pih.bridge.data import calibration_windows, tokenize
    from pih.bridge.settings import BridgeSettings
    from pih.commands import compare as cmp

    monkeypatch.setenv("PIH_CACHE", cache)
    st, prov, p, q = _tiny_pair(tmp_path, tiny, corpus, -30.0, -31.0)
    st.append(Record(prov, (), -20.0, {"order": "dense"}))
    st.append(Record(prov, (p,), -24.0, {"prune": 0.5, "order": "P"}))
    st.append(Record(prov, (q,), -26.0, {"quant": 2, "order": "Q"}))
    g = measured_grid(st.records())
    fns = (cmp.advise_layers, cmp.fisher_layers, cmp.loss_layers, cmp.alone_map_layers)
    alone = [fn(g, model=tiny_source, seeds=[0])[0] for fn in fns]
    assert len({v[(0.5, 2)] for v in alone}) == 4  # four different weightings
    passes = []
    real = adv.measure_layerwise
    monkeypatch.setattr(adv, "measure_layerwise", lambda *a, **k: passes.append(1) or real(*a, **k))
    fns[0](g, model=tiny_source, seeds=[0])
    fns[0](g, model=tiny_source, seeds=[0])
    assert len(passes) == 2  # outside a comparison nothing is kept
    passes.clear()
    with cmp.shared_layer_errors():
        shared = [fn(g, model=tiny_source, seeds=[0]) for fn in fns]
    assert len(passes) == 1
    for (pred, cost), want in zip(shared, alone, strict=True):
        assert pred[(0.5, 2)] == pytest.approx(want[(0.5, 2)], rel=1e-9) and cost > 0
    calib = calibration_windows(tokenize(tiny.tokenizer, corpus.train), 32, 4, 0,
                                source=f"train split of {corpus.name}")
    layers = adv.sample_layers(tiny, cmp.ADVISE_FRACTION)[:2]
    F, C = adv.fisher_diag(tiny, calib, layers), adv.output_grad_sq(tiny, calib, layers)
    s = BridgeSettings(offgrid="requantize")
    both = real(tiny, calib, [p, q], [(0, 1)], (), s, progress=False, layers=layers,
                sensitivities={"fisher": F, "channel": C})
    for kind, one in (("fisher", real(tiny, calib, [p, q], [(0, 1)], (), s, progress=False, layers=layers,
                                      fisher=F)),
                      ("channel", real(tiny, calib, [p, q], [(0, 1)], (), s, progress=False, layers=layers,
                                       channel=C))):
        np.testing.assert_allclose(both.weighted[kind][(0, 1)], one.errors[(0, 1)], rtol=1e-9)
    with pytest.raises(PihError, match="not a sensitivity"):
        real(tiny, calib, [p, q], [(0, 1)], (), s, progress=False, layers=layers, sensitivities={"hessian": F})


def test_failure_classes_say_what_went_wrong_where_and_why(tmp_path, capsys):
    """Failures above the floor are grouped as ties (prediction exactly 0), missed quantize-first wins and false
    quantize-first calls, each with one sentence naming the points and what the predictor cannot see."""
    from pih.compare import PREDICTORS, PRUNE_FIRST, failure_classes

    A = {(0.25, 2): [1.0, 1.1, 0.9], (0.5, 2): [-1.0, -1.1, -0.9], (0.25, 4): [-2.0, -2.1, -1.9],
         (0.5, 4): [-0.5, -0.6, -0.4]}
    g = measured_grid(_write(tmp_path / "s", A).records())
    pred = {(0.25, 2): -0.3, (0.5, 2): 0.0, (0.25, 4): 2.0, (0.5, 4): -1.0}
    cl = {c["class"]: c for c in failure_classes(score("x", pred, g), "sees nothing")}
    assert set(cl) == {"missed Q-first win", "tie", "false Q-first call"}
    assert cl["missed Q-first win"]["points"] == [(0.25, 2)] and cl["tie"]["points"] == [(0.5, 2)]
    assert cl["false Q-first call"]["points"] == [(0.25, 4)]
    s = cl["missed Q-first win"]["sentence"]
    assert "p=0.25/2b" in s and "5.0x its floor" in s and "because it sees nothing" in s
    pf, _ = PREDICTORS[PRUNE_FIRST].predict(g)
    (only,) = failure_classes(score(PRUNE_FIRST, pf, g), PREDICTORS[PRUNE_FIRST].blind)
    assert only["class"] == "missed Q-first win" and "never calls a quantize-first win" in only["sentence"]
    rc = main(["compare", str(tmp_path / "s"), "--predictors", "prune-first"])
    assert rc == 0 and "why they fail" in capsys.readouterr().out
