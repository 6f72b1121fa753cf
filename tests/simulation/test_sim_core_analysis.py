"""The core's grid analysis (pih.analysis), run on the records the simulation stored, gives the simulation's own
figures: one function serves every backend."""

import math

import pytest

from pih import Store
from pih.analysis import analyze_grid
from sim.presets import run_preset


@pytest.fixture(scope="module")
def disjoint_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("disjoint")
    summary = run_preset("disjoint", out, quick=True, progress=False)
    return out, summary


def test_core_analysis_matches_sim_summary(disjoint_run):
    out, summary = disjoint_run
    by_protocol = {}
    for r in Store(out / "store").records():
        by_protocol.setdefault(r.protocol, []).append(r)
    analyses = [analyze_grid(recs, n_boot=10) for recs in by_protocol.values()]
    analyses = [a for a in analyses if a.rows]
    assert len(analyses) == len(summary["pairings"])
    core = sorted((a.stats.rho, a.n_censored, len(a.rows)) for a in analyses if a.stats)
    sim = sorted((p["spearman_rho"], p["n_censored"], p["n_points"] + p["n_censored"])
                 for p in summary["pairings"] if not math.isnan(p["spearman_rho"]))
    assert len(core) == len(sim) > 0
    for (rc, cc, nc), (rs, cs, ns) in zip(core, sim, strict=True):
        assert rc == pytest.approx(rs, abs=1e-12)
        assert (cc, nc) == (cs, ns)


def test_core_analysis_cli_on_sim_store(disjoint_run, capsys):
    import json

    from pih.cli import main

    out, summary = disjoint_run
    assert main(["analyze", str(out / "store"), "--format", "json", "--boot", "10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["grids"]) == len(summary["pairings"])
    assert all(g["provenance"]["backend"] == "sim" for g in doc["grids"])
