"""Sweeps on Ray (`pih run --executor ray`): the same records as the serial run, bit for bit, on a local Ray instance
of 2 CPUs; a worker killed mid-task is retried without a duplicate; a task that raises is a failed record and the
grid goes on; a restarted driver resumes from the store. Skipped when Ray is not installed (pip install pih[ray])."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from pih import Store, Task  # noqa: E402
from pih.bridge.experiment import (  # noqa: E402
    BridgeWork,
    Runner,
    grid_tasks,
    parse_config,
    prefix_group,
    run_experiment,
)
from pih.executors import RayExecutor  # noqa: E402
from pih.records import run_sweep  # noqa: E402

pytestmark = pytest.mark.slow
TIMING = ("compress_seconds", "eval_seconds")


@pytest.fixture(scope="module")
def local_ray(tiny_folder):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the killing compute below, for the workers
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def _raw(tiny_source, corpus_name, cache, **quantize):
    return {
        "experiment": {"name": "ray", "model": tiny_source, "seed": 0, "threads": 1, "cache": cache,
                       "unit_arrays": True},
        "data": {"eval": corpus_name, "calibration": corpus_name, "seqlen": 64, "eval_tokens": 512,
                 "calibration_size": 8},
        "prune": {"criterion": "wanda", "ratios": [0.3, 0.5]},
        "quantize": {"bits": [3, 4], "symmetric": False, **quantize},
    }


@pytest.fixture(scope="module")
def cfg(tiny_source, corpus_name, cache):
    return parse_config(_raw(tiny_source, corpus_name, cache))


@pytest.fixture(scope="module")
def serial_store(cfg, tmp_path_factory, tiny_folder):
    path = tmp_path_factory.mktemp("serial") / "s"
    run_experiment(cfg, path, progress=False)
    return path


def _lines(path) -> dict:
    out = {}
    for line in (Path(path) / "records.jsonl").read_text().splitlines():
        d = json.loads(line)
        assert d["key"] not in out, f"key {d['key']} written twice"
        out[d["key"]] = d
    return out


def _science(d: dict) -> dict:
    """Everything a record says about the measurement (not when it ran or how long it took)."""
    ex = {k: v for k, v in d["extras"].items() if k not in TIMING}
    ex["stage_log"] = [{k: v for k, v in s.items() if k != "seconds"} for s in ex.get("stage_log", [])]
    prov = {k: v for k, v in d["provenance"].items() if k != "versions"}
    return {"value": d["value"], "failed": d.get("failed"), "pipeline": d["pipeline"], "point": d["point"],
            "provenance": prov, "extras": ex, "arrays": d["arrays"], "arrays_sha256": d.get("arrays_sha256")}


def _same_science(a: dict, b: dict, skip=()) -> None:
    assert set(a) == set(b)
    for k in a:
        if k not in skip:
            assert _science(a[k]) == _science(b[k]), f"record {k} ({a[k]['order']}) differs"


def test_ray_run_gives_the_serial_records_and_computes_each_pruning_prefix_once(cfg, serial_store, local_ray,
                                                                                 tmp_path):
    with RayExecutor() as ex:  # joins the local instance
        out = run_experiment(cfg, tmp_path / "r", progress=False, executor=ex)
    a, b = _lines(serial_store), _lines(tmp_path / "r")
    assert len(a) == 13
    _same_science(a, b)
    info = out["executor"]
    assert info["executor"] == "ray" and info["workers"] == 2 and info["groups"] == 5  # 2 ratios, 2 Q, dense
    assert info["model_loads"] <= 2 and info["worker_processes"] <= 2
    stages = info["stages_computed"]
    prune_alone = [s for s in stages if s.startswith("P[") and "->" not in s]
    assert len(prune_alone) == 2 and all(stages[s] == 1 for s in prune_alone), stages  # once for the grid
    assert all(n <= info["worker_processes"] for n in stages.values()), stages  # at most once per worker
    assert Store(tmp_path / "r").verify() == []
    # Q alone's groups go first and hand their prefix over: a worker that took one did not compute it
    received = info["stages_received"]
    assert set(received) <= {s for s in stages if s.startswith("Q[") and "->" not in s}, (received, stages)
    for s, n in received.items():
        assert stages[s] + n <= info["groups"] and stages[s] == 1, (s, stages, received)


def test_a_prefix_taken_from_another_worker_is_used_instead_of_computed_and_gives_the_same_records(cfg):
    """The sharing path without Ray: one worker's runner computes Q alone and offers its snapshot; a fresh runner
    (another worker) takes it for Q→P instead of computing Q, and its record is the one computed whole."""
    import numpy as np

    from pih.bridge import experiment as E

    E._WORKER_RUNNERS.clear()
    work = BridgeWork(cfg)
    first = work.runner()
    tasks = [Task(first.provenance, pl, pt) for pl, pt in grid_tasks(cfg)]
    q_alone = next(t for t in tasks if len(t.pipeline) == 1 and t.pipeline[0].kind == "quantize")
    qp = next(t for t in tasks if len(t.pipeline) == 2 and t.pipeline[0] == q_alone.pipeline[0])
    (key,) = work.offers([q_alone])
    assert key in work.wants([qp]) and work.offers([qp]) == []
    first.compute(q_alone)
    snaps = work.offer([key, ("no such prefix",)])
    assert list(snaps) == [key]
    own = first.compute(qp)  # Q from this runner's own cache
    work.work_info()
    first.release()
    E._WORKER_RUNNERS.clear()
    second = work.runner()
    asked = []
    work.use_source(lambda k: asked.append(k) or snaps.get(k))
    got = second.compute(qp)
    work.use_source(None)
    info = work.work_info()
    second.release()
    E._WORKER_RUNNERS.clear()
    q_label = E._prefix_label(q_alone.pipeline, E._task_settings(cfg, q_alone))
    assert key in asked and info["stages_received"] == [q_label], (asked, info)
    assert q_label not in info["stages_computed"] and info["stages_computed"], info

    def science(r):
        ex = {k: v for k, v in r.extras.items() if k not in TIMING}
        ex["stage_log"] = [{k: v for k, v in st.items() if k != "seconds"} for st in ex["stage_log"]]
        return r.key, r.value, json.dumps(ex, sort_keys=True, default=str)

    assert science(got) == science(own)
    assert set(got.arrays) == set(own.arrays) and all(np.array_equal(got.arrays[k], own.arrays[k])
                                                      for k in own.arrays)


def test_the_driver_loads_no_model_its_records_identity_comes_from_a_worker(cfg, serial_store, local_ray, tmp_path,
                                                                           monkeypatch):
    """A Runner built in the driver (this process) fails the test; the workers (other processes) are untouched:
    the Ray run still writes the serial run's records, their provenance from a worker's runner."""

    def no_model_here(self, *a, **k):
        raise AssertionError("the driver loaded a model")

    monkeypatch.setattr(Runner, "__init__", no_model_here)
    with RayExecutor() as ex:
        out = run_experiment(cfg, tmp_path / "r", progress=False, executor=ex)
    _same_science(_lines(serial_store), _lines(tmp_path / "r"))
    assert out["provenance"]["model"] == json.loads(
        (Path(serial_store) / "records.jsonl").read_text().splitlines()[0])["provenance"]["model"]


def test_a_pipeline_the_model_cannot_take_is_one_line_from_the_worker_and_nothing_is_stored(
        tiny_source, corpus_name, cache, local_ray, tmp_path, monkeypatch):
    from pih import PihError

    def no_model_here(self, *a, **k):
        raise AssertionError("the driver loaded a model")

    bad_cfg = parse_config(_raw(tiny_source, corpus_name, cache, group=7))  # divides no layer's inputs
    monkeypatch.setattr(Runner, "__init__", no_model_here)
    with RayExecutor() as ex, pytest.raises(PihError, match=r"group") as err:
        run_experiment(bad_cfg, tmp_path / "r", progress=False, executor=ex)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "r" / "records.jsonl").exists() or Store(tmp_path / "r").keys() == set()


class KillOnceAndFail(BridgeWork):
    """The worker running ``kill`` dies (os._exit) on its first attempt; ``fail`` raises on every attempt."""

    def __init__(self, cfg, marker, kill, fail):
        super().__init__(cfg)
        self.marker, self.kill, self.fail = str(marker), kill, fail

    def __call__(self, task):
        if task.key == self.kill and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        if task.key == self.fail:
            raise ValueError("deliberately broken point")
        return super().__call__(task)


def test_killed_worker_is_retried_without_duplicate_failure_recorded_and_driver_resumes(cfg, serial_store, local_ray,
                                                                                        tmp_path):
    serial = _lines(serial_store)
    runner = Runner(cfg, progress=False)
    tasks = [Task(runner.provenance, pl, pt) for pl, pt in grid_tasks(cfg)]
    runner.release()
    kill = next(t.key for t in tasks if t.pipeline and len(t.pipeline) == 2 and t.pipeline[0].kind == "prune")
    fail = [t.key for t in tasks if len(t.pipeline) == 1 and t.pipeline[0].kind == "quantize"][-1]
    # a driver killed after 4 points: its store holds them (copied from the serial run), the restart resumes
    path = tmp_path / "r"
    path.mkdir()
    kept = (serial_store / "records.jsonl").read_text().splitlines(keepends=True)[:4]
    (path / "records.jsonl").write_text("".join(kept))
    if (serial_store / "arrays").is_dir():
        shutil.copytree(serial_store / "arrays", path / "arrays")
    kept_keys = {json.loads(x)["key"] for x in kept}
    assert kill not in kept_keys and fail not in kept_keys
    marker = tmp_path / "killed"
    work = KillOnceAndFail(cfg, marker, kill, fail)
    with RayExecutor(max_retries=2) as ex:
        recs = run_sweep(Store(path), tasks, work, progress=False, group_by=prefix_group, executor=ex)
        assert marker.is_file(), "the worker was never killed"
        assert sum(e["tasks"] for e in ex.log) == len(tasks) - 4  # the stored points were not recomputed
    got = _lines(path)
    assert set(got) == set(serial) and len(recs) == len(tasks)
    assert (path / "records.jsonl").read_text().startswith("".join(kept))  # the old lines untouched
    _same_science(serial, got, skip={fail})
    assert got[fail]["failed"] == "ValueError: deliberately broken point" and got[fail]["value"] != got[fail]["value"]
    assert [r.key for r in recs if not r.ok] == [fail]
    # the restarted driver with everything stored computes nothing
    with RayExecutor() as ex:
        run_sweep(Store(path), tasks, work, progress=False, group_by=prefix_group, executor=ex)
        assert ex.log == []
    assert _lines(path) == got


def test_compare_predictions_on_ray_are_the_serial_ones(local_ray, tmp_path, capsys):
    from test_bridge_compare import _compare, _store_from_simulation, _tensors

    tensors = _tensors(tmp_path)
    st, _ = _store_from_simulation(tmp_path, tensors)
    args = (st.path, "--tensors", tensors, "--assumptions", "A1", "A2", "--seed", 0, 1, 2)
    rc, serial, err = _compare(capsys, *args)
    assert rc == 0, err
    rc, distributed, err = _compare(capsys, *args, "--executor", "ray")
    assert rc == 0, err
    assert len(serial["predictions"]) == 3 * 2 * 4
    assert distributed["predictions"] == serial["predictions"]

    def scores(out):  # the cost columns are wall time, the one thing that may differ
        return [{k: v for k, v in r.items() if k not in ("cost_seconds", "cost_ratio")} for r in out["results"]]

    assert scores(distributed) == scores(serial)


def _out_of_memory_on_quantize(task):
    from pih import Record

    if task.pipeline[0].kind == "quantize":
        raise MemoryError("no memory on this worker")
    return Record(task.provenance, task.pipeline, -1.0)


def test_an_error_that_is_not_the_points_is_reported_and_not_stored(local_ray, tmp_path):
    from pih import PihError, Provenance, Prune, Quantize

    prov = Provenance(backend="sim", model="m", data="d", metric="-err", versions={})
    tasks = [Task(prov, (Prune(0.5),)), Task(prov, (Quantize(4),)), Task(prov, (Prune(0.3),))]
    with RayExecutor() as ex, pytest.raises(PihError, match=r"1 of 3 points were not computed \(MemoryError: no "
                                                         r"memory on this worker\).*rerun"):
        run_sweep(Store(tmp_path / "s"), tasks, _out_of_memory_on_quantize, progress=False, executor=ex)
    assert Store(tmp_path / "s").keys() == {tasks[0].key, tasks[2].key}


class Prefixes:
    """A compute with prefixes but no model: a task ("make", k) computes prefix k and keeps it, ("use", k) takes k
    from another task when it can and says where its k came from."""

    def __init__(self):
        self.held, self.source = {}, None

    def offers(self, tasks):
        return [k for op, k in tasks if op == "make"]

    def wants(self, tasks):
        return [k for op, k in tasks if op == "use"]

    def offer(self, keys):
        return {k: self.held[k] for k in keys if k in self.held}

    def use_source(self, source):
        self.source = source

    def __call__(self, task):
        op, k = task
        if op == "make":
            if k == "broken":  # its group runs, but makes nothing to offer
                return ("made nothing", k)
            self.held[k] = f"{k} made by {os.getpid()}"
            return ("made", k)
        got = self.source(k) if self.source is not None else None
        return ("took", got) if got is not None else ("computed", k)


def test_ray_submits_the_offering_groups_first_and_the_others_take_their_prefixes(local_ray):
    from pih.executors import GroupWork

    items = [[("use", "q3"), ("use", "q4")], [("use", "broken")], [("make", "q3")], [("make", "q4")],
             [("make", "broken")], [("make", "p")]]
    # one task at a time: the order of submission is the order of work; a wait long enough for a loaded machine
    with RayExecutor(cpus_per_task=2, prefix_wait=5.0) as ex:
        got = {i: res["records"] for i, res in ex.map(GroupWork(compute=Prefixes()), items)}
    assert got[2] == [("made", "q3")] and got[3] == [("made", "q4")] and got[5] == [("made", "p")]
    (a, b) = got[0]
    assert a[0] == b[0] == "took" and a[1].startswith("q3 made by") and b[1].startswith("q4 made by"), got[0]
    assert got[1] == [("computed", "broken")]  # its maker failed: computed here, not lost
    assert got[4] == [("made nothing", "broken")]
