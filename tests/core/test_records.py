import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pih import (
    PihError,
    ProtocolMismatch,
    Provenance,
    Prune,
    Quantize,
    Record,
    Store,
    Task,
    require_same_protocol,
    run_sweep,
)
from pih.errors import PihWarning

CHILD = Path(__file__).with_name("_sweep_child.py")


def prov(**kw):
    base = dict(backend="sim", model="gauss-512", data="synthetic", metric="-rel_err", seqlen=None,
                calibration="gauss", calibration_size=128, seed=0)
    base.update(kw)
    return Provenance(**base)


def test_record_roundtrip_and_key_determinism(tmp_path):
    r = Record(prov(), (Prune(0.5), Quantize(4)), -0.1, {"p": 0.5, "b": 4}, {"note": "x"},
               arrays={"owners": np.arange(4)})
    store = Store(tmp_path / "s")
    store.append(r)
    back = Store(tmp_path / "s").records()[0]
    assert back == r and back.key == r.key
    assert back.order == "P[magnitude,unstructured,0.5] -> Q[4b,channel,sym,absmax]"
    np.testing.assert_array_equal(store.load_arrays(r)["owners"], np.arange(4))
    with pytest.raises(PihError, match="already stored"):
        store.append(r)
    # The order is part of the identity; the seed too; versions are not.
    assert Record(prov(), (Quantize(4), Prune(0.5)), -0.1, {"p": 0.5, "b": 4}).key != r.key
    assert Record(prov(seed=1), r.pipeline, -0.1, r.point).key != r.key
    assert Record(prov(versions={"x": "1"}), r.pipeline, -0.1, r.point).key == r.key


def test_protocols_are_never_mixed():
    a = Record(prov(), (Prune(0.5),), -0.1)
    b = Record(prov(seed=3), (Quantize(4),), -0.2)
    assert require_same_protocol(a, b) == a.protocol
    c = Record(prov(seqlen=2048), (Quantize(4),), -0.2)
    with pytest.raises(ProtocolMismatch, match="seqlen: None vs 2048"):
        require_same_protocol(a, c)


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    store = Store(tmp_path)
    r1 = Record(prov(), (Prune(0.1),), -0.1)
    store.append(r1)
    with open(store.file, "ab") as fh:
        fh.write(b'{"key": "abc", "provenance": {"bac')  # a crash mid-write
    with pytest.warns(PihWarning, match="line 2 is incomplete"):
        assert [r.key for r in Store(tmp_path).records()] == [r1.key]
    r2 = Record(prov(), (Prune(0.2),), -0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PihWarning)  # the same report, and the repair's
        Store(tmp_path).append(r2)
    lines = store.file.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(s) for s in lines)


def test_corrupt_middle_line_is_an_error(tmp_path):
    store = Store(tmp_path)
    store.append(Record(prov(), (Prune(0.1),), -0.1))
    with open(store.file, "ab") as fh:
        fh.write(b"garbage\n")
    with pytest.raises(PihError, match="corrupt record on line 2"):  # nothing is appended to a corrupt store
        store.append(Record(prov(), (Prune(0.2),), -0.2))
    with open(store.file, "ab") as fh:
        fh.write(Path(store.file).read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(PihError, match="corrupt record on line 2"):
        Store(tmp_path).records()


def test_store_path_must_be_a_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PihError, match="path="):
        Store(f)


def test_run_sweep_checks_compute(tmp_path):
    t = Task(prov(), (Prune(0.1),), {"i": 0})
    with pytest.raises(PihError, match="another task"):
        run_sweep(Store(tmp_path), [t], lambda task: Record(prov(), (Prune(0.2),), 0.0), progress=False)
    with pytest.raises(PihError, match="same key"):
        run_sweep(Store(tmp_path), [t, t], lambda task: None, progress=False)


def _count(store_dir):
    f = Path(store_dir) / "records.jsonl"
    return f.read_bytes().count(b"\n") if f.exists() else 0


def test_sweep_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path):
    n = 40
    store_dir, log1, log2 = tmp_path / "store", tmp_path / "run1.log", tmp_path / "run2.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, str(CHILD), str(store_dir), str(log1), str(n)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _count(store_dir) < 10:
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline, "the sweep child made no progress"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    done_before = {d["key"] for d in Store(store_dir).raw()}
    assert 10 <= len(done_before) < n, "the kill must land mid-run"

    out = subprocess.run([sys.executable, str(CHILD), str(store_dir), str(log2), str(n)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    recomputed = set(Path(log2).read_text().split())
    assert not recomputed & done_before, "finished points were recomputed"
    raw = Store(store_dir).raw()
    keys = [d["key"] for d in raw]
    assert len(keys) == n == len(set(keys)), "points lost or duplicated"
    for d in raw:  # every value and sidecar is the one its point defines
        i = d["point"]["i"]
        assert d["value"] == pytest.approx(-(i**0.5))
        assert Store(store_dir).load_arrays(d["key"])["e"][0, 0] == i


def test_run_sweep_in_groups_stores_only_what_is_missing(tmp_path):
    """compute_group: one call per group (e.g. a simulation seed); a rerun after a partial store recomputes only
    the groups with a missing task, and stores only the missing records."""
    from pih import Provenance, Quantize, Record, Store, Task, run_sweep

    tasks = [Task(Provenance("t", "m", "d", "-e", seed=s), (Quantize(b),)) for s in (0, 1) for b in (2, 4, 8)]
    calls = []

    def group(ts):
        calls.append(len(ts))
        return [Record(t.provenance, t.pipeline, -1.0 / t.pipeline[0].bits) for t in ts]

    st = Store(tmp_path / "s")
    first = run_sweep(st, tasks[:4], compute_group=group, group_by=lambda t: t.provenance.seed, progress=False)
    assert calls == [3, 1] and len(st) == 4
    again = run_sweep(st, tasks, compute_group=group, group_by=lambda t: t.provenance.seed, progress=False)
    assert calls == [3, 1, 3] and len(st) == 6  # seed 0 complete: not recomputed; seed 1 recomputed, 2 stored
    assert [r.value for r in again[:4]] == [r.value for r in first]
    import pytest

    with pytest.raises(Exception, match="group_by"):
        run_sweep(st, tasks, compute_group=group, progress=False)
