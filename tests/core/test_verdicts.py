"""The verdict table (pih.verdicts) and the verification report (pih.report): rows are computed from the result
files, README's table is the committed results' table, and a report never mixes modes silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pih import report as R
from pih import verdicts as V
from pih.errors import PihError
from pih.stats import sign_test, wilson

REPO = Path(__file__).resolve().parents[2]
SIM, MEASURED = REPO / "experiments" / "sim", REPO / "experiments" / "measured"


def test_readme_table_is_the_committed_results_table():
    """README's 'What the toolkit found' table is exactly what the committed results give: a changed result
    without a regenerated README (python -m pih.verdicts --readme), or a hand-edited number, fails here."""
    text = (REPO / "README.md").read_text()
    assert V.README_BEGIN in text and V.README_END in text
    block = text[text.index(V.README_BEGIN):text.index(V.README_END) + len(V.README_END)]
    assert block == V.readme_table(REPO)


def test_every_row_has_a_verdict_and_links_evidence_that_exists():
    rows = V.verdicts(V.committed(REPO))
    assert len({v.key for v in rows}) == len(rows)
    for v in rows:
        assert v.verdict in (V.HOLDS, V.FAILS, V.UNDECIDED), (v.key, v.verdict)
        assert v.proof or v.evidence, v.key
        for p in (v.proof, *v.evidence, *v.plots):
            if p:
                assert (REPO / p).exists(), (v.key, p)


def test_without_evidence_every_row_says_so():
    for v in V.verdicts(V.Evidence(None, None)):
        assert v.verdict in (V.MISSING, V.FAILS, V.HOLDS)  # the proof-only and computed rows need no files
        if v.verdict == V.MISSING:
            assert v.measured.startswith("needs ")


@pytest.fixture
def evidence(tmp_path):
    """A writable copy of the committed results."""
    shutil.copytree(SIM, tmp_path / "sim")
    shutil.copytree(MEASURED, tmp_path / "measured", ignore=shutil.ignore_patterns("*.png", "advise_report*"))
    return V.Evidence(tmp_path / "sim", tmp_path / "measured"), tmp_path


def _edit(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _row(ev, key) -> V.Verdict:
    return next(v for v in V.verdicts(ev) if v.key == key)


def test_t1_fails_when_a_residual_is_large(evidence):
    ev, root = evidence
    assert _row(ev, "t1-sim").verdict == V.HOLDS
    _edit(root / "sim" / "disjoint-A2" / "summary.json", lambda d: d.update(t1_max_residual=1e-6))
    assert _row(ev, "t1-sim").verdict == V.FAILS


def test_t1_real_fails_on_one_bad_pair(evidence):
    ev, root = evidence

    def bad(d):
        d["pairs"][0]["analysis"]["t1_identity_gap"] = 1e-3 * max(1.0, abs(d["pairs"][0]["analysis"]["A_PQ_direct"]))

    _edit(root / "measured" / "resnet_digits.json", bad)
    assert _row(ev, "t1-real").verdict == V.FAILS


def test_harma_fails_on_one_quantize_first_win_inside_its_scope(evidence):
    ev, root = evidence

    def bad(d):
        next(c for c in d["configs"] if c["in_scope"])["n_quantize_first_better"] = 1

    _edit(root / "sim" / "harma-A1" / "summary.json", bad)
    assert _row(ev, "harma").verdict == V.FAILS


def test_kuzmin_tolerance(evidence):
    ev, root = evidence
    _edit(root / "sim" / "kuzmin-A1" / "summary.json", lambda d: d.update(max_abs_dev_from_reference_db=0.06))
    assert _row(ev, "kuzmin").verdict == V.FAILS


@pytest.mark.parametrize("ci, expected", [([0.1, 0.5], V.HOLDS), ([-0.2, 0.3], V.UNDECIDED), ([-0.5, -0.1], V.FAILS)])
def test_real_trend_verdict_follows_the_intervals(evidence, ci, expected):
    ev, root = evidence
    for name in V.REAL_TREND_GRIDS:
        def set_ci(d):
            for g in d["grids"]:
                g["seed_summary"]["pooled"]["ci"] = ci
        _edit(root / "measured" / f"{name}.json", set_ci)
    assert _row(ev, "real-trend").verdict == expected


@pytest.mark.parametrize("ci, expected", [([0.1, 0.5], V.HOLDS), ([-0.2, 0.3], V.UNDECIDED), ([-0.5, -0.1], V.FAILS)])
def test_t2_trend_verdict_follows_the_interval(evidence, ci, expected):
    ev, root = evidence
    _edit(root / "sim" / "disjoint-A2" / "summary.json", lambda d: d.update(rho_ci=ci))
    assert _row(ev, "t2-trend-disjoint-A2").verdict == expected


def test_sign_flip_holds_only_when_every_pairing_shows_it(evidence):
    ev, root = evidence

    def flip(d):
        for p in d["pairings"]:
            p["mean_A_x_neg"], p["mean_A_x_pos"] = -1.0, 1.0

    _edit(root / "sim" / "disjoint-A2-seen" / "summary.json", flip)
    assert _row(ev, "t2-sign-disjoint-A2-seen").verdict == V.HOLDS
    _edit(root / "sim" / "disjoint-A2-seen" / "summary.json", lambda d: d["pairings"][0].update(mean_A_x_pos=-1.0))
    assert _row(ev, "t2-sign-disjoint-A2-seen").verdict == V.FAILS


def test_prune_first_holds_without_a_win_above_the_floor(evidence):
    ev, root = evidence
    assert _row(ev, "prune-first").verdict == V.FAILS
    for name in V.REAL_TREND_GRIDS[:2]:
        def no_wins(d):
            for g in d["grids"]:
                for pt in g["seed_summary"]["points"]:
                    pt["A_qp"]["mean"] = -abs(pt["A_qp"]["mean"])
        _edit(root / "measured" / f"{name}.json", no_wins)
    assert _row(ev, "prune-first").verdict == V.HOLDS


def test_advise_counts_only_decided_cases(evidence):
    ev, root = evidence
    before = _row(ev, "advise").figures

    def undecide(d):
        for c in d["summary"]["per_case"]:
            c["decided"] = False

    _edit(root / "measured" / "advise_tiny_llama_model1.json", undecide)
    after = _row(ev, "advise").figures
    assert after["n"] < before["n"] and after["right"] <= before["right"]


def test_advise_pooled_with_the_benchmarks_points_pairs_them_with_prune_first(evidence):
    """advise's rule at the benchmark's points: advise-layers' signs right above the floor join the verified runs,
    paired with prune-first on the same points (only the points where exactly one is wrong enter the sign test)."""
    ev, root = evidence
    f = _row(ev, "advise").figures
    b = json.loads((root / "measured" / "prediction_benchmark.json").read_text())
    grids = [g for g, r in b["per_grid"].items() if "advise-layers" in r]
    wrong = {n: {(g, x["prune"], x["quant"]) for g in grids for x in b["per_grid"][g][n]["failures"]}
             for n in ("advise-layers", "prune-first")}
    m = sum(b["per_grid"][g]["advise-layers"]["n_above_floor"] for g in grids)
    wb = f["with_benchmark"]
    assert wb["n"] == f["n"] + m and wb["right"] == f["right"] + m - len(wrong["advise-layers"])
    assert wb["prune_first"] == f["prune_first"] + m - len(wrong["prune-first"])
    assert wb["only_advise"] == f["only_advise"] + len(wrong["prune-first"] - wrong["advise-layers"])
    assert wb["only_prune_first"] == f["only_prune_first"] + len(wrong["advise-layers"] - wrong["prune-first"])

    def advise_never_wrong(d):
        for rows in d["per_grid"].values():
            if "advise-layers" in rows:
                rows["advise-layers"]["failures"] = []

    _edit(root / "measured" / "prediction_benchmark.json", advise_never_wrong)
    after = _row(ev, "advise").figures["with_benchmark"]
    assert after["right"] == f["right"] + m and after["only_prune_first"] == 0


def test_wilson_interval():
    lo, hi = wilson(30, 33)
    assert 0.75 < lo < 0.77 and 0.96 < hi < 0.98
    assert wilson(0, 0) == (0.0, 1.0)


def test_report_writes_the_table_definitions_and_sections(tmp_path):
    out = tmp_path / "report"
    assert R.build_report(out, quick=True, sections=(), progress=False) == 0
    text = (out / "README.md").read_text()
    rows = V.verdicts(V.committed(REPO))
    assert "## Verdicts" in text and "## Definitions" in text and "A > 0: quantizing first is better" in text
    for v in rows:
        assert f'<a id="{v.key}"></a>' in text and f"(#{v.key})" in text
    summary = json.loads((out / "summary.json").read_text())
    assert [v["key"] for v in summary["verdicts"]] == [v.key for v in rows]


def test_report_shows_this_runs_verdict_beside_the_committed_one(tmp_path, monkeypatch):
    out = tmp_path / "report"
    d = json.loads((SIM / "harma-A1" / "summary.json").read_text())
    next(c for c in d["configs"] if c["in_scope"])["n_quantize_first_better"] = 3
    (out / "sim" / "harma-A1").mkdir(parents=True)
    (out / "sim" / "harma-A1" / "summary.json").write_text(json.dumps(d))
    shutil.copytree(SIM / "kuzmin-A1", out / "sim" / "kuzmin-A1")  # reproduced exactly
    monkeypatch.setattr(R, "SIM_RUNS", ())
    R.build_report(out, quick=True, sections=("sim",), progress=False)
    lines = (out / "README.md").read_text().splitlines()
    harma = next(x for x in lines if x.startswith("| [Harma"))
    assert "| **fails** |" in harma  # this run's verdict differs from the committed "holds", and says so
    assert "| same, same figures |" in next(x for x in lines if x.startswith("| [Kuzmin"))
    assert "| — |" in next(x for x in lines if x.startswith("| [T2 under A2a[E]"))  # a proof: nothing to rerun


def test_a_quick_report_never_replaces_a_full_one_silently(tmp_path):
    out = tmp_path / "report"
    R.build_report(out, quick=False, sections=(), progress=False)
    with pytest.raises(PihError, match="full report"):
        R.build_report(out, quick=True, sections=(), progress=False)
    R.build_report(out, quick=False, sections=(), progress=False)  # resuming the same mode is automatic
    assert R.build_report(out, quick=True, sections=(), progress=False, force=True) == 0
    assert R.default_out(True) != R.default_out(False)


def test_sign_test():
    assert sign_test(0, 0) == 1.0 and sign_test(1, 0) == 1.0
    assert sign_test(6, 0) == pytest.approx(2 / 64) and sign_test(0, 6) == pytest.approx(2 / 64)
    assert sign_test(3, 3) == 1.0


def test_simulation_beats_prune_first_only_when_the_paired_test_says_so(evidence):
    ev, root = evidence
    assert _row(ev, "sim-vs-real").verdict == V.UNDECIDED  # 1 discordant point: no verdict either way

    def many(d):  # prune-first wrong at 6 more points where the best set is right
        for g in ("compare_sparsegpt_gptq", "compare_wanda_rtn"):
            d["per_grid"][g]["prune-first"]["failures"] += [
                {"prune": 9.0 + i, "quant": 2, "A_pred": -1.0, "A_measured": 1.0} for i in range(3)]

    _edit(root / "measured" / "prediction_benchmark.json", many)
    r = _row(ev, "sim-vs-real")
    assert r.verdict == V.HOLDS and r.figures["only_prune_first_wrong"] == 7

    def worse(d):  # the other way round
        for g in ("compare_sparsegpt_gptq", "compare_wanda_rtn"):
            d["per_grid"][g]["prune-first"]["failures"] = []
            for name in d["per_grid"][g]:
                if name not in V.STORE_PREDICTORS:
                    d["per_grid"][g][name]["failures"] = [
                        {"prune": 9.0 + i, "quant": 2, "A_pred": 1.0, "A_measured": -1.0} for i in range(4)]

    _edit(root / "measured" / "prediction_benchmark.json", worse)
    assert _row(ev, "sim-vs-real").verdict == V.FAILS


def test_survey_holds_when_one_pairing_shows_the_flip(evidence):
    ev, root = evidence
    assert _row(ev, "survey").verdict == V.FAILS
    _edit(root / "sim" / "survey-A1" / "summary.json",
          lambda d: d["pairings"][0].update(mean_A_x_neg=-0.1, mean_A_x_pos=0.1))
    r = _row(ev, "survey")
    assert r.verdict == V.HOLDS and r.figures["n_flip"] == 1
