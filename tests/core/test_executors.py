"""Executors (pih.executors) and sweeps on them, without Ray: the driver is the only writer (a result reported twice
is stored once), a task that raises is a failed record and the others go on, a lost group is reported and
computed by the rerun, and the command line's executor options fail in one line."""

import math

import pytest

from pih import PihError, Provenance, Prune, Quantize, Record, Store, Task
from pih.cli import main
from pih.executors import (
    Executor,
    GroupWork,
    Lost,
    RayExecutor,
    SerialExecutor,
    groups_of,
    make_executor,
    using,
)
from pih.records import run_sweep


def _tasks(seeds=(0, 1)):
    out = []
    for s in seeds:
        prov = Provenance(backend="sim", model="m", data="d", metric="-err", seed=s, versions={})
        out += [Task(prov, (Prune(0.5),)), Task(prov, (Quantize(4),)), Task(prov, (Prune(0.5), Quantize(4))),
                Task(prov, (Quantize(4), Prune(0.5)))]
    return out


def _value(t):
    return -0.1 * len(t.pipeline) - t.provenance.seed


def compute(t):
    return Record(t.provenance, t.pipeline, _value(t))


def _by_seed(t):
    return t.provenance.seed


class Twice(Executor):
    """Reports every finished item twice (a retried task whose first attempt also came back)."""

    def map(self, fn, items):
        for i, item in enumerate(items):
            res = fn(item)
            yield i, res
            yield i, res


class LoseFirst(Executor):
    def map(self, fn, items):
        for i, item in enumerate(items):
            yield i, (Lost("WorkerCrashedError after 3 retries") if i == 0 else fn(item))


def _keys_in_file(path):
    import json

    return [json.loads(x)["key"] for x in (path / "records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("grouped", [False, True])
def test_a_result_reported_twice_is_stored_once(tmp_path, grouped):
    tasks = _tasks()
    kw = {"compute_group": lambda g: [compute(t) for t in g], "group_by": _by_seed} if grouped else \
        {"compute": compute}
    recs = run_sweep(Store(tmp_path / "s"), tasks, progress=False, executor=Twice(), **kw)
    keys = _keys_in_file(tmp_path / "s")
    assert sorted(keys) == sorted(t.key for t in tasks)  # each key once in the file
    assert [r.value for r in recs] == [_value(t) for t in tasks]


def test_executor_sweep_stores_what_the_serial_sweep_stores(tmp_path):
    tasks = _tasks()
    a = run_sweep(Store(tmp_path / "a"), tasks, compute, progress=False)
    b = run_sweep(Store(tmp_path / "b"), tasks, compute, progress=False, executor=SerialExecutor(),
                  group_by=_by_seed)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert sorted(_keys_in_file(tmp_path / "a")) == sorted(_keys_in_file(tmp_path / "b"))


def test_a_task_that_raises_is_a_failed_record_and_the_grid_goes_on(tmp_path):
    tasks = _tasks()
    bad = tasks[2].key

    def flaky(t):
        if t.key == bad:
            raise ValueError("singular\nHessian")
        return compute(t)

    recs = run_sweep(Store(tmp_path / "s"), tasks, flaky, progress=False, executor=SerialExecutor())
    st = Store(tmp_path / "s")
    assert len(st) == len(tasks)
    failed = st.get(bad)
    assert not failed.ok and failed.failed == "ValueError: singular Hessian" and math.isnan(failed.value)
    assert [r.key for r in recs if not r.ok] == [bad]
    # a group computed at once: its error fails each of its tasks, the other groups are stored
    def group(g):
        if g[0].provenance.seed == 1:
            raise RuntimeError("boom")
        return [compute(t) for t in g]

    recs = run_sweep(Store(tmp_path / "g"), tasks, compute_group=group, group_by=_by_seed, progress=False,
                     executor=SerialExecutor())
    assert [r.ok for r in recs] == [True] * 4 + [False] * 4
    assert all(r.failed == "RuntimeError: boom" for r in recs[4:])


def test_out_of_memory_is_not_stored_as_a_failure(tmp_path):
    def oom(t):
        raise MemoryError()

    with pytest.raises(MemoryError):
        run_sweep(Store(tmp_path / "s"), _tasks(), oom, progress=False, executor=SerialExecutor())
    assert len(Store(tmp_path / "s")) == 0


def test_a_lost_group_is_reported_and_computed_by_the_rerun(tmp_path):
    tasks = _tasks()
    with pytest.raises(PihError, match=r"4 of 8 points were not computed \(WorkerCrashedError.*rerun"):
        run_sweep(Store(tmp_path / "s"), tasks, compute, progress=False, executor=LoseFirst(), group_by=_by_seed)
    assert set(Store(tmp_path / "s").keys()) == {t.key for t in tasks[4:]}
    ex = SerialExecutor()
    recs = run_sweep(Store(tmp_path / "s"), tasks, compute, progress=False, executor=ex, group_by=_by_seed)
    assert sum(e["tasks"] for e in ex.log) == 4  # only the missing ones
    assert [r.value for r in recs] == [_value(t) for t in tasks]


def test_using_sets_the_default_executor_of_sweeps(tmp_path):
    ex = Twice()
    with using(ex):
        run_sweep(Store(tmp_path / "s"), _tasks(), compute, progress=False)
    assert sum(e["stored"] for e in ex.log) == 8 and len(ex.log) == 16  # each result twice, stored once
    plain = SerialExecutor()
    with using(plain):  # serial: the sweeps stay as they are (no executor)
        run_sweep(Store(tmp_path / "t"), _tasks(), compute, progress=False)
    assert plain.log == []


def test_group_work_reports_where_it_ran():
    out = GroupWork(compute=compute)(_tasks()[:2])
    assert len(out["records"]) == 2 and out["pid"] > 0 and out["info"] == {}


def test_groups_of_keeps_first_seen_order():
    tasks = _tasks()
    assert groups_of(tasks, None) == [[t] for t in tasks]
    assert groups_of(tasks, _by_seed) == [tasks[:4], tasks[4:]]


def test_make_executor_validates_its_options(monkeypatch):
    assert isinstance(make_executor(), SerialExecutor)
    with pytest.raises(PihError, match="--address.*--executor ray only"):
        make_executor("serial", address="auto")
    with pytest.raises(PihError, match="--gpus-per-task.*--executor ray only"):
        make_executor("serial", gpus_per_task=1)
    with pytest.raises(PihError, match="--executor"):
        make_executor("dask")
    import pih.executors as E

    monkeypatch.setattr(E, "ray_installed", lambda: False)
    with pytest.raises(PihError, match=r"pip install pih\[ray\]"):
        make_executor("ray")
    monkeypatch.setattr(E, "ray_installed", lambda: True)
    for kw, name in (({"gpus_per_task": -1}, "--gpus-per-task"), ({"cpus_per_task": math.nan}, "--cpus-per-task"),
                     ({"address": "nohost"}, "--address"), ({"address": "h:99999"}, "--address")):
        with pytest.raises(PihError, match=name):
            make_executor("ray", **kw)
    ex = make_executor("ray", address="10.0.0.1:6379", gpus_per_task=0.5)
    assert isinstance(ex, RayExecutor) and ex.gpus_per_task == 0.5 and ex.cpus_per_task == 1.0
    assert make_executor("ray", address="ray://head:10001").address == "ray://head:10001"


@pytest.mark.parametrize("cmd", [["run", "x.toml"], ["simulate", "--preset", "harma", "--quick"],
                                 ["compare", "some-store"]])
def test_executor_options_fail_in_one_line(cmd, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rc = main([*cmd, "--address", "auto"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--address" in err and "--executor ray only" in err
    import pih.executors as E

    monkeypatch.setattr(E, "ray_installed", lambda: False)
    rc = main([*cmd, "--executor", "ray"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "pip install pih[ray]" in err
