"""`pih advise`'s calibration against its own verified outcomes, its messages and its report's figures (no model:
the committed verification files and reports, and synthetic runs)."""

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pih.advice import (
    attach_calibration,
    calibrate,
    calibration_table,
    level_of,
    load_calibration,
    wilson,
)
from pih.render import advice_lines

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "experiments" / "measured" / "advise_report" / "advise.json"
PROTO = {"eval_tokens": 1024, "calibration_size": 32, "seqlen": 128, "weighting": "relative", "offgrid": "requantize"}


def _measure_script():
    spec = importlib.util.spec_from_file_location("advise_measure", ROOT / "experiments" / "advise_measure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(agreement, right, pred=1.0, meas=1.0, tie=False, model="m@1", family="llama", n=28, lf=0.25):
    return {"agreement": agreement, "right": right, "tie": tie, "decided": True, "predicted_gain": pred,
            "measured_gain": meas, "model": model, "family": family, "n_linear_layers": n, "layer_fraction": lf,
            "protocol": dict(PROTO)}


def _out(agreement, gain=2.0, level="high", family="llama", n_linear=28, model="m@1", eval_tokens=1024, lf=0.25):
    return {"confidence": {"layers_agreeing": agreement, "level": level, "n_layers": 7, "bootstrap_sign": 1.0,
                           "margin_sd": 3.0},
            "measurement": {"layer_fraction": lf}, "expected_gain_ppl": gain,
            "model_info": {"family": family, "n_linear_layers": n_linear},
            "provenance": {"model": model, "calibration_size": 32, "seqlen": 128,
                           "settings": {"advise_eval_tokens": eval_tokens, "weighting": "relative",
                                        "bridge": {"offgrid": "requantize"}}}}


def test_wilson_interval():
    lo, hi = wilson(14, 15)
    assert lo == pytest.approx(0.7018, abs=1e-3) and hi == pytest.approx(0.9881, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.4345, abs=1e-3)


def test_bins_have_enough_runs_and_levels_need_evidence():
    runs = ([_run(1.0, True) for _ in range(20)] + [_run(0.9, True), _run(0.85, False), _run(0.8, False),
                                                    _run(0.75, False), _run(0.7, False), _run(0.7, True)])
    cal = calibration_table(runs, min_runs=5)
    bins = cal["tables"]["0.25"]["bins"]
    assert [b["n"] for b in bins] == [20, 6] and all(b["n"] >= 5 for b in bins)
    assert bins[0]["right"] == 20 and bins[1]["right"] == 2
    assert bins[0]["level"] == "high" and bins[1]["level"] == "low"
    assert bins[1]["lo"] == 0.7 and bins[0]["hi"] == 1.0 and bins[0]["lo"] == bins[1]["hi"] == pytest.approx(0.95)
    # 64 % agreement: below every verified run -> uncalibrated, never "high"
    res = calibrate(_out(0.64), cal)
    assert res["level"] == "uncalibrated" and "no verified runs at this agreement level" in res["text"]
    res = calibrate(_out(0.8), cal)
    assert res["level"] == "low" and res["text"].startswith("right in 2 of 6 verified runs with agreement 70-90 %")
    res = calibrate(_out(1.0), cal)
    assert res["level"] == "high" and "right in 20 of 20" in res["text"]
    # a level is only as high as its Wilson lower bound allows: 4 of 4 right is not enough for "high"
    small = calibration_table([_run(1.0, True) for _ in range(4)], min_runs=5)
    assert small["tables"]["0.25"]["bins"][0]["level"] != "high"
    assert level_of(0.79) == "medium" and level_of(0.8) == "high" and level_of(0.49) == "low"


def test_gain_interval_from_measured_over_predicted_ratios():
    ratios = np.linspace(0.5, 2.5, 25)
    runs = [_run(1.0, True, pred=0.1, meas=0.1 * r) for r in ratios]
    res = calibrate(_out(1.0, gain=3.0), calibration_table(runs))
    assert res["gain_ratio"]["n"] == 25
    assert res["gain_interval_ppl"] == pytest.approx([3.0 * np.quantile(ratios, 0.05), 3.0 * np.quantile(ratios,
                                                                                                          0.95)])
    few = calibration_table([_run(1.0, True, pred=1.0, meas=m) for m in (0.4, 0.6, 1.5, 2.0, 0.9)])
    assert calibrate(_out(1.0, gain=2.0), few)["gain_interval_ppl"] == pytest.approx([0.8, 4.0])  # range, n < 20
    assert calibrate(_out(1.0, gain=None), few)["gain_interval_ppl"] is None


def test_outside_what_was_verified_is_warned():
    cal = calibration_table([_run(1.0, True, n=28), _run(1.0, True, n=210, model="s@2")] * 5)
    assert calibrate(_out(1.0), cal)["outside_verified"] == []
    for out, word in ((_out(1.0, family="qwen2"), "family 'qwen2'"), (_out(1.0, n_linear=700), "700 linear layers"),
                      (_out(1.0, model="other@3"), "not among the verified"),
                      (_out(1.0, eval_tokens=256), "eval_tokens 256"),
                      (_out(1.0, lf=0.5), "layer fraction 0.5")):
        w = calibrate(out, cal)["outside_verified"]
        assert any(word in x for x in w), (word, w)


def test_shipped_calibration_is_the_committed_files_table(tmp_path):
    mod = _measure_script()
    fresh = mod.calibrate(out=tmp_path / "cal.json")
    shipped = json.loads((ROOT / "pih" / "data" / "advise_calibration.json").read_text())
    assert json.loads(json.dumps(fresh, default=float)) == shipped
    files = [f["file"] for f in shipped["source"]["files"]]
    assert files == list(mod.VERIFIED) and all((ROOT / f).is_file() for f in files)
    assert shipped["source"]["files"][0]["calibration_seeds"] == [0, 1, 2]
    # every verified run counted once; right is the verified best of the same run
    t = shipped["tables"]["0.25"]
    assert sum(b["n"] for b in t["bins"]) + (t["tie"]["n"] if t["tie"] else 0) == t["n_runs"]
    tiny = json.loads((ROOT / mod.VERIFIED[0]).read_text())
    assert sum(r["source"] == mod.VERIFIED[0] and r["layer_fraction"] == 0.25 for r in shipped["runs"]) == len(
        tiny["rows"])
    assert sum(r["right"] for r in shipped["runs"] if r["source"] == mod.VERIFIED[0] and r["layer_fraction"] == 0.25
               ) == sum(r["quarter"]["right"] for r in tiny["rows"])
    assert load_calibration()["tables"] == shipped["tables"]


def test_report_json_gets_calibration_keys_and_keeps_its_own():
    out = json.loads(REPORT.read_text())
    before = copy.deepcopy(out)
    attach_calibration(out, load_calibration())
    for k in before:
        if k != "confidence":
            assert out[k] == before[k], k
    assert set(before["confidence"]) <= set(out["confidence"])
    assert out["confidence"]["agreement_level"] == before["confidence"]["level"]
    assert out["confidence"]["level"] in ("high", "medium", "low", "uncalibrated", "tie")
    assert out["expected_gain_interval_ppl"] == out["calibration"]["gain_interval_ppl"]
    text = "\n".join(advice_lines(out))
    assert "verified runs with agreement" in text and "From the verified outcomes" in text


def test_order_only_message_says_what_was_skipped():
    out = json.loads(REPORT.read_text())
    attach_calibration(out, load_calibration())
    oo = copy.deepcopy(out)
    oo["measurement"]["evaluations"] = 0
    oo.update(quant_curve=None, cer=[], pih_order=None, pih_agrees=None, expected_gain_ppl=None)
    text = "\n".join(advice_lines(oo))
    assert "--order-only" in text and "No quantizer" not in text
    noq = copy.deepcopy(out)
    noq.update(quant_curve=None, cer=[], pih_order=None, pih_agrees=None,
               methods=[m for m in out["methods"] if m.startswith("P[")])
    assert "No quantizer among the methods" in "\n".join(advice_lines(noq))
    un = copy.deepcopy(out)
    un.pop("calibration")
    t = "\n".join(advice_lines(un))
    assert "How sure: uncalibrated" in t and "How sure: high" not in t


def test_report_figures_no_zero_bar_and_readable_layer_ticks(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pih.render_plots import _layer_ticks, _loss_bars

    fig, ax = plt.subplots()
    _loss_bars(ax, np.arange(3.0), np.array([0.0, 1.5, 0.2]), 0.4, "b", "predicted")
    heights = [p.get_height() for p in ax.patches]
    assert sorted(heights) == pytest.approx([0.2, 1.5])  # no bar of zero height
    assert any("0 (best)" in t.get_text() for t in ax.texts)
    plt.close(fig)
    names = [f"{b}.{t}" for b in range(30) for t in ("q_proj", "up_proj")]
    d = np.ones(len(names))
    d[7] = -1
    fig, ax = plt.subplots()
    ax.bar(np.arange(len(d)), d)
    _layer_ticks(ax, names, d)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) <= 16 and labels[0] == "0"
    assert [t.get_text() for t in ax.texts] == [names[7]]  # the layer against the pick is named
    plt.close(fig)
    from pih.render_plots import advice_report

    out = json.loads((ROOT / "experiments" / "measured" / "advise_report_smollm2" / "advise.json").read_text())
    attach_calibration(out, load_calibration())
    rep = advice_report(out, tmp_path / "r")
    for f in ("orders.png", "layers.png", "curve.png", "README.md"):
        assert (rep / f).stat().st_size > 0


def _verified_doc(model, cases):
    """An advise_measure output: cases as (case, decided, best, dense, [(seed, {picker: pick}), ...])."""
    per_case, rows = [], []
    for case, decided, best, dense, runs in cases:
        per_case.append({"case": case, "decided": decided, "A_QP_mean": 1.0, "A_QP_floor": 0.1,
                         "seeds": [s for s, _ in runs], "best_on_average": best})
        for seed, picks in runs:
            rows.append({"case": case, "seed": seed, "best": best, "dense_ppl": dense, "cost": {"ratio": 4.0},
                         **{k: {"pick": v, "regret": 0.0 if v == best else 0.5} for k, v in picks.items()}})
    return {"provenance": {"model": model}, "summary": {"per_case": per_case}, "rows": rows}


def test_pool_verified_scores_decided_runs_against_the_case_best():
    """Only decided cases count (a three-method case when every seed agrees on its best); a pick is right when it
    is the case's best on average; the misses' regret is shared over the dense perplexity; advise and prune first
    are compared where exactly one is right."""
    from pih.advice import pool_verified

    both = {"quarter": "QP", "all_layers": "QP", "pih": "PQ", "prune_first": "PQ"}
    d1 = _verified_doc("m1", [
        ("a", True, "QP", 10.0, [(0, both), (1, both), (2, both | {"quarter": "PQ"})]),
        ("b", False, "PQ", 10.0, [(0, both), (1, both), (2, both)]),  # within the floor: not counted
        ("c", None, "PQ", 10.0, [(0, both | {"quarter": "PQ"}), (1, both | {"quarter": "PQ"})]),  # seeds agree
    ])
    d2 = _verified_doc("m2", [("d", True, "PQ", 20.0, [(0, both), (1, both | {"quarter": "PQ"})])])
    s = pool_verified([d1, d2])["summary"]
    assert (s["cases"], s["cases_decided"], s["runs"], s["runs_decided"]) == (4, 3, 10, 7)
    a, pf = s["advise"], s["prune first"]
    assert (a["hits"], a["misses"]) == (2 + 2 + 1, 2) and (pf["hits"], pf["misses"]) == (0 + 2 + 2, 3)
    assert a["regret_of_dense_max"] == pytest.approx(0.5 / 10.0)
    assert s["advise_vs_prune_first"] == {"only_advise": 2, "only_prune_first": 1, "sign_test_p": 1.0}
    assert s["models"] == ["m1", "m2"] and s["advise_cost_ratio_median"] == 4.0


def test_orders_tie_only_within_round_off_of_their_predicted_errors():
    from pih.advice import tied_orders

    assert tied_orders({"pq": 1e-3, "qp": 1e-3 * (1 + 1e-15)}) == ["pq", "qp"]  # the last digits
    assert tied_orders({"pq": 1e-3 + 1e-13, "qp": 1e-3}) == ["qp"]  # a real difference, however small
    assert tied_orders({"pq": 2.0, "qp": 2.0, "pqp": 3.0}) == ["pq", "qp"]
    assert tied_orders({"pq": 5e-20, "qp": 0.0}) == ["qp"]
