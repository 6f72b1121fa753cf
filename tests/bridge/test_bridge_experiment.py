"""`pih run`: configs, grid records with provenance, resume, JSON output, analysis on real weights."""

import argparse
import json
import math

import numpy as np
import pytest

from pih import PihError, Store, interference, theorem1
from pih.bridge.experiment import grid_tasks, parse_config, run_experiment


@pytest.fixture
def _raw(tiny_source, corpus_name):
    return lambda **over: _make_raw(tiny_source, corpus_name, **over)


def _make_raw(TINY, CORPUS, **over):
    raw = {
        "experiment": {"name": "t", "model": TINY, "seed": 0, "threads": 1, "unit_arrays": True},
        "data": {"eval": CORPUS, "calibration": CORPUS, "seqlen": 64, "eval_tokens": 2048, "calibration_size": 8},
        "prune": {"criterion": "wanda", "ratios": [0.5]},
        "quantize": {"bits": [2, 4], "symmetric": False},
    }
    for k, v in over.items():
        raw[k] = v
    return raw


def test_config_errors(_raw, tiny_source):
    TINY = tiny_source
    with pytest.raises(PihError, match="unknown section"):
        parse_config({**_raw(), "bogus": {}})
    with pytest.raises(PihError, match=r"prune=\['ratio'\]: unknown keys"):
        parse_config(_raw(prune={"criterion": "wanda", "ratio": 0.5}))
    with pytest.raises(PihError, match="offgrid"):
        parse_config(_raw(settings={"offgrid": "maybe"}))
    with pytest.raises(PihError, match="bit width"):
        parse_config(_raw(quantize={"bits": [0]}))
    with pytest.raises(PihError, match="experiment.seed"):
        parse_config(_raw(experiment={"name": "t", "model": TINY, "seed": "0"}))
    with pytest.raises(PihError, match="grid.orders"):
        parse_config(_raw(grid={"orders": ["sideways"]}))


def test_grid_tasks_order(_raw):
    cfg = parse_config(_raw())
    from pih import grid_role

    tasks = grid_tasks(cfg)
    assert [grid_role(pl) for pl, _ in tasks] == ["dense", "P", "Q", "Q", "P->Q", "Q->P", "P->Q", "Q->P"]
    assert all(pt == {} for _, pt in tasks)  # the order lives in the pipeline only


def test_run_records_resume_and_analysis(tiny_folder, cache, tmp_path, _raw, corpus_name):
    CORPUS = corpus_name
    raw = _raw()
    raw["experiment"]["cache"] = cache
    cfg = parse_config(raw)
    out = run_experiment(cfg, tmp_path / "store", progress=False)
    assert len(out["points"]) == 8
    for p in out["points"]:
        assert set(p) >= {"prune", "quant", "order", "ppl"} and math.isfinite(p["ppl"])
    prov = out["provenance"]
    assert prov["seqlen"] == 64 and prov["calibration_size"] == 8 and prov["data"].startswith(CORPUS)
    assert prov["settings"]["eval_tokens"] == 2048 and prov["model"].startswith("tiny-llama")
    store = Store(tmp_path / "store")
    recs = store.records()
    assert len(recs) == 8 and len({r.protocol for r in recs}) == 1
    assert all(r.extras["n_tokens"] == 2048 and r.extras["stage_log"] is not None for r in recs)
    # the pair analysis: Theorem 1 identity to float precision, decomposition A = T1 + ΔQP − ΔPQ
    for pair in out["pairs"]:
        an = pair["analysis"]
        assert an["t1_identity_gap"] <= 1e-9 * max(1.0, abs(an["A_PQ_direct"]))
        assert an["decomposition_gap"] <= 1e-9 * max(1.0, abs(an["A_PQ_error_actual"]))
        assert pair["A_QP"] == pytest.approx(pair["ppl_P_first"] - pair["ppl_Q_first"])
    # the same core functions recompute it from the stored per-weight arrays
    qp = next(r for r in recs if r.role == "Q->P" and r.coords[1] == 2)
    arr = store.load_arrays(qp)
    t1 = theorem1(arr["errors"], arr["owners_pq"], arr["owners_qp"], arr["sensitivities"])
    assert t1.advantage == pytest.approx(qp.extras["analysis"]["A_PQ_t1"], rel=1e-4)
    d = interference(arr["total_qp"], arr["owners_qp"], arr["errors"], arr["sensitivities"])
    assert d == pytest.approx(qp.extras["analysis"]["delta_QP"], rel=1e-3)
    assert np.all(arr["owners_pq"] >= 0)
    # resume: nothing recomputed
    import pih.bridge.experiment as ex

    calls = []
    orig = ex.Runner.compute
    ex.Runner.compute = lambda self, t: calls.append(t) or orig(self, t)
    try:
        again = run_experiment(cfg, tmp_path / "store", progress=False)
    finally:
        ex.Runner.compute = orig
    assert calls == [] and again["points"] == out["points"]


def test_crash_leaves_only_complete_points(tiny_folder, cache, tmp_path, _raw):
    raw = _raw(quantize={"bits": [3], "symmetric": False})
    raw["experiment"]["cache"] = cache
    raw["experiment"]["analysis"] = False
    cfg = parse_config(raw)
    import pih.bridge.experiment as ex

    orig = ex.Runner.compute
    n = {"k": 0}

    def flaky(self, task, error=MemoryError):
        n["k"] += 1
        if n["k"] == 3:
            raise error("simulated crash")
        return orig(self, task)

    ex.Runner.compute = flaky  # an error that says nothing about the point (out of memory): the run stops
    try:
        with pytest.raises(MemoryError, match="simulated crash"):
            run_experiment(cfg, tmp_path / "s", progress=False)
    finally:
        ex.Runner.compute = orig
    assert len(Store(tmp_path / "s").records()) == 2
    out = run_experiment(cfg, tmp_path / "s", progress=False)
    assert len(out["points"]) == 5 and len(Store(tmp_path / "s").records()) == 5
    # a point whose computation raises (deterministically) is stored as failed and the grid goes on
    n["k"] = 0
    ex.Runner.compute = lambda self, task: flaky(self, task, RuntimeError)
    try:
        out = run_experiment(cfg, tmp_path / "t", progress=False)
    finally:
        ex.Runner.compute = orig
    recs = Store(tmp_path / "t").records()
    assert len(recs) == 5 and out["n_failed"] == 1
    assert [r.failed for r in recs if not r.ok] == ["RuntimeError: simulated crash"]


def test_cli_run_json(tiny_folder, cache, tmp_path, capsys, tiny_source, corpus_name):
    TINY, CORPUS = tiny_source, corpus_name
    from pih.commands import run as run_cmd

    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text(f"""
[experiment]
name = "cli"
model = "{TINY}"
cache = "{cache}"
analysis = false
[data]
eval = "{CORPUS}"
calibration = "{CORPUS}"
seqlen = 64
eval_tokens = 1024
calibration_size = 4
[prune]
criterion = "magnitude"
ratios = [0.5]
[quantize]
bits = [4]
""")
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    run_cmd.register(sub)
    args = ap.parse_args(["run", str(cfgfile), "--out", str(tmp_path / "o"), "--format", "json", "--no-progress"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["order"] for p in doc["points"]] == ["dense", "P", "Q", "P->Q", "Q->P"]
    # magnitude + per-channel RTN: the pruned and kept sets agree, prune-first is never worse (Harma)
    assert doc["pairs"][0]["A_QP"] <= 1e-9
    # the core's grid analysis reads the same store and finds the same advantage
    from pih.analysis import analyze_grid

    grid = analyze_grid(Store(tmp_path / "o").records(), n_boot=10)
    assert [r.advantage_qp for r in grid.rows] == pytest.approx([doc["pairs"][0]["A_QP"]], abs=1e-12)
    assert grid.rows[0].cer_censored == "no-curve"  # Q alone at one bit width: no CER, and it says so
    bad = tmp_path / "bad.toml"
    bad.write_text(cfgfile.read_text().replace("[prune]", "[prune]\nsparsity = 1"))
    args = ap.parse_args(["run", str(bad), "--out", str(tmp_path / "o2")])
    with pytest.raises(PihError, match="sparsity"):
        args.func(args)
    assert not (tmp_path / "o2").exists()


def test_tiny_deit_grid(cache, tmp_path):
    pytest.importorskip("sklearn")
    raw = {
        "experiment": {"name": "d", "model": "tiny-deit:digits:150", "cache": cache, "threads": 1},
        "data": {"eval": "digits", "calibration": "digits", "calibration_size": 64},
        "prune": {"criterion": "wanda", "ratios": [0.5]},
        "quantize": {"bits": [3], "symmetric": False, "update": "gptq"},
    }
    out = run_experiment(parse_config(raw), tmp_path / "d", progress=False)
    assert out["metric"] == "accuracy" and out["provenance"]["metric"] == "top1"
    assert [p["order"] for p in out["points"]] == ["dense", "P", "Q", "P->Q", "Q->P"]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in out["points"])
    dense = out["points"][0]["accuracy"]
    assert dense > 0.3  # a trained classifier, far above chance (0.1)
    pair = out["pairs"][0]
    assert pair["A_QP"] == pytest.approx(pair["accuracy_Q_first"] - pair["accuracy_P_first"])
    assert pair["analysis"]["t1_identity_gap"] < 1e-9 * max(1, abs(pair["analysis"]["A_PQ_direct"]))


def test_mixed_precision_orders_and_prefix_cache_keys(tiny_folder, cache, tmp_path, _raw):
    """RTN has no calibration: progressive and regressive give the same model. Specs that differ only in a field
    their label omits (MixedPrecision's update) must not share a cached prefix."""
    bits = [4, 4, 4, 4, 2, 2, 2] * 4
    pls = []
    for upd in ("none", "gptq"):
        for order in ("progressive", "regressive"):
            pls.append({"name": f"{upd}-{order}", "settings": {"mp_order": order},
                        "stages": [{"kind": "mixed", "bits": bits, "symmetric": False, "update": upd}]})
    raw = _raw(grid={"orders": []}, pipelines=pls)
    raw.pop("prune")
    raw.pop("quantize")
    raw["experiment"]["cache"] = cache
    out = run_experiment(parse_config(raw), tmp_path / "mp", progress=False)
    ppl = {p["order"]: p["ppl"] for p in out["points"]}
    assert ppl["none-progressive"] == ppl["none-regressive"]
    assert ppl["gptq-progressive"] != ppl["none-progressive"]


def test_bad_shapes_fail_before_anything_is_stored(tiny_folder, cache, tmp_path, _raw):
    raw = _raw(prune={"criterion": "wanda", "structure": "3:5", "ratios": [0.4]})
    raw["experiment"]["cache"] = cache
    with pytest.raises(PihError, match="3:5"):
        run_experiment(parse_config(raw), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    raw = _raw(quantize={"bits": [4], "group": 48})
    raw["experiment"]["cache"] = cache
    with pytest.raises(PihError, match="group"):
        run_experiment(parse_config(raw), tmp_path / "s2", progress=False)
    assert not (tmp_path / "s2").exists()


def test_seeds_run_into_one_store_with_a_noise_floor(tiny_folder, cache, tmp_path, _raw):
    """[experiment] seeds = [0, 1, 2]: one run per calibration seed, same model (one protocol), and the summary gives
    per point the mean, spread and noise floor of A(Q→P) over the seeds (the same figures pih analyze prints)."""
    raw = _raw(quantize={"bits": [2, 4], "symmetric": False})
    raw["experiment"] = {k: v for k, v in raw["experiment"].items() if k != "seed"}
    raw["experiment"].update({"seeds": [0, 1, 2], "cache": cache, "unit_arrays": False})
    raw["data"]["eval_tokens"] = 1024
    cfg = parse_config(raw)
    out = run_experiment(cfg, tmp_path / "store", progress=False)
    assert out["seeds"] == [0, 1, 2] and len(out["models"]) == 1 and len(out["grids"]) == 1
    ss = out["grids"][0]["seed_summary"]
    assert ss["seeds"] == [0, 1, 2] and ss["n_points"] == 2
    by_seed = {(p["seed"], p["quant"]): p["A_QP"] for p in out["pairs"]}
    for pt in ss["points"]:
        vals = [by_seed[(s, pt["bits"])] for s in (0, 1, 2)]
        assert pt["A_qp"]["values"] == pytest.approx(vals)
        assert pt["A_qp"]["floor"] == pytest.approx(2 * np.std(vals, ddof=1))
    recs = Store(tmp_path / "store").records()
    assert {r.provenance.seed for r in recs} == {0, 1, 2} and len({r.protocol for r in recs}) == 1
    with pytest.raises(PihError, match="either seed or seeds"):
        parse_config({**raw, "experiment": {**raw["experiment"], "seed": 0}})
    with pytest.raises(PihError, match="seeds"):
        parse_config({**raw, "experiment": {**raw["experiment"], "seeds": [1, 1]}})


def test_compute_is_a_pure_function_of_its_task(tiny_folder, cache, tmp_path, _raw):
    """A Q->P point computed alone (its P->Q partner never computed in this process) gives the same record, pair
    analysis included, as when the grid runs in order: nothing carried from the previous task decides a result."""
    from pih import Task
    from pih.bridge.experiment import Runner

    raw = _raw(quantize={"bits": [3], "symmetric": False})
    raw["experiment"]["cache"] = cache
    raw["data"]["eval_tokens"] = 1024
    cfg = parse_config(raw)
    tasks = [Task(None, pl, pt) for pl, pt in grid_tasks(cfg)]
    qp = next(t for t in tasks if len(t.pipeline) == 2 and t.pipeline[0].kind == "quantize")
    in_order = Runner(cfg, progress=False)
    recs = [in_order.compute(Task(in_order.provenance, t.pipeline, t.point)) for t in tasks]
    alone = Runner(cfg, progress=False).compute(Task(in_order.provenance, qp.pipeline, qp.point))
    ref = next(r for r in recs if r.pipeline == qp.pipeline)
    assert alone.value == ref.value
    for k, v in ref.extras["analysis"].items():
        assert alone.extras["analysis"][k] == (pytest.approx(v, rel=1e-9, abs=1e-12) if isinstance(v, float) else v)


def test_prefix_groups_put_each_pruning_ratio_with_both_orders(_raw):
    """The groups a worker computes together (pih run --executor ray): per ratio P alone and both orders at every
    bit width (P's prefix once, the Q->P pair analysis next to its P->Q model), Q alone and dense apart."""
    from pih import Provenance, Task, grid_role
    from pih.bridge.experiment import prefix_group
    from pih.executors import groups_of

    cfg = parse_config(_raw(prune={"criterion": "wanda", "ratios": [0.3, 0.5]}, quantize={"bits": [3, 4]}))
    prov = Provenance(backend="torch", model="m", data="d", metric="neg_perplexity", versions={})
    tasks = [Task(prov, pl, pt) for pl, pt in grid_tasks(cfg)]
    groups = groups_of(tasks, prefix_group)
    roles = sorted(tuple(grid_role(t.pipeline) for t in g) for g in groups)
    assert roles == [("P", "P->Q", "Q->P", "P->Q", "Q->P")] * 2 + [("Q",), ("Q",), ("dense",)]
    for g in groups:
        ratios = {s.ratio for t in g for s in t.pipeline if s.kind == "prune"}
        assert len(ratios) <= 1
        assert [tasks.index(t) for t in g] == sorted(tasks.index(t) for t in g)  # the grid's order kept
    other_seed = Provenance(backend="torch", model="m", data="d", metric="neg_perplexity", seed=1, versions={})
    assert prefix_group(Task(other_seed, tasks[1].pipeline)) != prefix_group(tasks[1])
