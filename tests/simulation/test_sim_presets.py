"""``pih simulate``: presets run from the command line and emit the documented JSON fields."""

from __future__ import annotations

import json

import pytest

from pih.cli import main


def run_json(capsys, tmp_path, *args):
    rc = main(["simulate", *args, "--quick", "--seeds", "1", "--no-progress", "--format", "json", "--out",
               str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert (tmp_path / "report.md").exists() and (tmp_path / "summary.json").exists()
    return out


def test_kuzmin_preset(capsys, tmp_path):
    """Checks proofs/kuzmin.md: the preset's rows are the reference table to 0.05 dB."""
    out = run_json(capsys, tmp_path, "--preset", "kuzmin")
    assert [r["bits"] for r in out["rows"]] == [8, 6, 4, 3, 2]
    for r in out["rows"]:
        assert set(r) >= {"bits", "sparsity", "quant_snr_db", "prune_snr_db"}
    assert out["max_abs_dev_from_reference_db"] <= 0.05
    assert (tmp_path / "kuzmin.png").stat().st_size > 1000


def test_harma_preset(capsys, tmp_path):
    """Checks proofs/harma.md: prune-first excess is zero and, within one scale per ranking scope, quantize-first
    is never better; the out-of-scope configurations are reported separately."""
    out = run_json(capsys, tmp_path, "--preset", "harma")
    assert out["max_abs_excess_prune_first"] <= 1e-12
    assert out["n_quantize_first_better"] == 0
    assert out["n_quantize_first_strictly_worse"] >= 1
    assert {r["in_scope"] for r in out["configs"]} == {True, False}


def test_disjoint_preset(capsys, tmp_path):
    """Checks proofs/t1_ownership.md and proofs/t2_monotonicity.md: T1 holds to 1e-10 on the disjoint pairs and
    the T2 statistics are reported."""
    out = run_json(capsys, tmp_path, "--preset", "disjoint")
    assert out["t1_max_residual"] <= 1e-10
    assert set(out) >= {"spearman_rho", "rho_ci", "concordant_fraction", "n_points"}
    assert (tmp_path / "t2.png").exists()
    # rerunning resumes from the store
    out2 = run_json(capsys, tmp_path, "--preset", "disjoint")
    assert out2["spearman_rho"] == pytest.approx(out["spearman_rho"])


def test_interference_and_mixed_presets(capsys, tmp_path):
    """Checks proofs/interference.md: Δ by p and its spread over bits are reported; mixed precision on disjoint
    layer sets has Δ = 0 and A = 0."""
    out = run_json(capsys, tmp_path / "i", "--preset", "interference")
    assert set(out) >= {"delta_by_p", "delta_spread_over_bits"}
    assert out["pairings"][0]["additivity_max_residual"] <= 1e-12
    out = run_json(capsys, tmp_path / "m", "--preset", "mixed-precision")
    assert out["delta_disjoint_max_abs"] == 0.0 and out["A_disjoint_max_abs"] == 0.0


def test_bad_preset_arguments(capsys, tmp_path):
    assert main(["simulate", "--preset", "kuzmin", "--assumptions", "nope", "--out", str(tmp_path)]) == 2
    assert "assumptions=" in capsys.readouterr().err


def test_default_folders_name_the_preset_the_assumption_set_and_the_size(capsys, tmp_path, monkeypatch):
    """Without --out, runs under two assumption sets (or sizes) write two folders: nothing is overwritten."""
    monkeypatch.chdir(tmp_path)
    for a in ("A1", "A2"):
        assert main(["simulate", "--preset", "kuzmin", "--quick", "--seeds", "1", "--assumptions", a, "--no-progress",
                     "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["out"] == f"results/sim/kuzmin-{a}-quick"
    for a in ("A1", "A2"):
        assert (tmp_path / f"results/sim/kuzmin-{a}-quick/summary.json").is_file()


def test_every_multi_panel_figure_has_one_legend_and_marks_each_points_bits(tmp_path):
    """The presets return figure data; pih.render_plots draws it: one legend for all the lines of all panels, and
    the bit width written at every point."""
    from pih import render_plots
    from sim import assumptions as AS
    from sim import presets

    res = presets.PRESETS["interference"](tmp_path, quick=True, seeds=1, assumptions=AS.A1, progress=False)
    assert set(res.figures) == {"delta.png", "interference.png"}
    for data in res.figures.values():
        fig = render_plots.panels_figure(data)
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        points = [str(b) for p in data["panels"] for ln in p["lines"] for b in ln["bits"]]
        assert sorted(texts) == sorted(points) and points
