"""What the results store guarantees: nothing lost, nothing duplicated, nothing changed read as right, every
problem reported with its line or file. The fault-injection suite (tests/faults) does the same things for real."""

import errno
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pih import PihError, Provenance, Prune, Quantize, Record, Store, Task, run_sweep
from pih import records as records_module
from pih.analysis import analyze_grid
from pih.errors import PihWarning, StoreError

CHILD = Path(__file__).with_name("_append_child.py")


def prov(**kw):
    base = dict(backend="sim", model="gauss", data="synthetic", metric="-rel_err", seed=0, versions={})
    base.update(kw)
    return Provenance(**base)


def recs(n, arrays=False):
    return [Record(prov(), (Prune(round(0.05 * (i + 1), 2)),), -0.1 * (i + 1), {"i": i},
                   arrays={"e": np.arange(4.0) + i} if arrays else None) for i in range(n)]


def filled(path, n=3, arrays=False):
    st = Store(path)
    for r in recs(n, arrays):
        st.append(r)
    return st


def lines(st):
    return st.file.read_bytes().splitlines(keepends=True)


def quiet(fn, *a):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PihWarning)
        return fn(*a)


# -- the last line ----------------------------------------------------------------------------------------------
def test_a_complete_last_record_without_its_newline_is_kept_by_the_next_append(tmp_path):
    st = filled(tmp_path, 2)
    st.file.write_bytes(st.file.read_bytes().rstrip(b"\n"))  # e.g. copied by a tool that strips the newline
    shown = [d["key"] for d in Store(tmp_path).raw()]
    assert len(shown) == 2  # shown as stored ...
    r3 = recs(3)[2]
    Store(tmp_path).append(r3)  # ... so it must survive the next append
    assert [d["key"] for d in Store(tmp_path).raw()] == [*shown, r3.key]
    assert all(json.loads(s) for s in lines(st))


def test_a_torn_last_line_is_reported_and_moved_aside_not_deleted(tmp_path):
    st = filled(tmp_path, 2)
    torn = lines(st)[1][:57]
    st.file.write_bytes(lines(st)[0] + torn)
    with pytest.warns(PihWarning, match="line 2 is incomplete"):
        assert len(Store(tmp_path).raw()) == 1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", PihWarning)
        Store(tmp_path).append(recs(3)[2])
    assert any("moved the incomplete line 2" in str(x.message) for x in w)
    assert len(Store(tmp_path).raw()) == 2
    assert (tmp_path / "records.torn").read_bytes() == torn + b"\n"


# -- every line is checked --------------------------------------------------------------------------------------
def test_a_changed_value_is_reported_with_its_line_never_read_as_right(tmp_path):
    st = filled(tmp_path, 3)
    ls = lines(st)
    assert b'"value":-0.2' in ls[1]
    st.file.write_bytes(ls[0] + ls[1].replace(b'"value":-0.2', b'"value":-0.3') + ls[2])
    with pytest.raises(StoreError, match="line 2 was changed after it was written"):
        Store(tmp_path).records()


@pytest.mark.parametrize("line, why", [
    (b'{"a": 1}', "line 2 is not a record"),
    (b"[1, 2, 3]", "line 2 is not a record"),
    (b"\xff\xfe garbage", "corrupt record on line 2"),
    (None, "line 2 holds value='-0.2'"),
    (b"null", "line 2 is not a record"),
])
def test_a_line_that_is_not_a_record_is_an_error_naming_the_line(tmp_path, line, why):
    st = filled(tmp_path, 3)
    ls = lines(st)
    if line is None:  # a record whose value is a string (an old line, without a checksum)
        d = json.loads(ls[1])
        d.pop("check", None)
        d["value"] = str(d["value"])
        line = json.dumps(d).encode()
    st.file.write_bytes(ls[0] + line + b"\n" + ls[2])
    with pytest.raises(StoreError, match=why.replace("(", r"\(")):
        Store(tmp_path).raw()


def test_a_null_value_is_an_error_naming_the_line(tmp_path):
    st = filled(tmp_path, 2)
    d = json.loads(lines(st)[0])
    d.pop("check", None)
    d["value"] = None
    st.file.write_bytes(json.dumps(d).encode() + b"\n" + lines(st)[1])
    with pytest.raises(StoreError, match="line 1 holds value=None"):
        Store(tmp_path).records()


def test_lines_of_older_versions_without_a_checksum_are_read(tmp_path):
    st = filled(tmp_path, 2)
    old = []
    for s in lines(st):
        d = json.loads(s)
        d.pop("check", None)
        old.append(json.dumps(d).encode() + b"\n")
    st.file.write_bytes(b"".join(old))
    assert [r.value for r in Store(tmp_path).records()] == [-0.1, -0.2]


# -- duplicated keys ----------------------------------------------------------------------------------------------
def _duplicate(st, value=None):
    ls = lines(st)
    d = json.loads(ls[0])
    d.pop("check", None)
    d["created"] += 5
    if value is not None:
        d["value"] = value
    st.file.write_bytes(b"".join(ls) + json.dumps(d).encode() + b"\n")  # what an older version could write
    return d["key"]


def test_an_identical_duplicate_is_reported_and_used_once(tmp_path):
    st = filled(tmp_path, 2)
    key = _duplicate(st)
    with pytest.warns(PihWarning, match="stored twice with the same value .lines 1 and 3"):
        got = Store(tmp_path).records()
    assert [r.key for r in got].count(key) == 1 and len(got) == 2
    assert quiet(lambda: Store(tmp_path).duplicates) == [{"key": key, "line": 3, "same_as_line": 1}]


def test_a_conflicting_duplicate_is_refused_by_every_reader_resume_included(tmp_path):
    st = filled(tmp_path, 2)
    _duplicate(st, value=-7.0)
    for read in (lambda s: s.records(), lambda s: s.raw(), lambda s: s.keys()):
        with pytest.raises(StoreError, match=r"stored twice with different values \(line 1: -0.1, line 3: -7.0\)"):
            read(Store(tmp_path))
    r0 = recs(2)[0]
    with pytest.raises(StoreError, match="line 1.*line 3"):  # the sweep does not pick one silently
        run_sweep(Store(tmp_path), [Task(r0.provenance, r0.pipeline, r0.point)], lambda t: r0, progress=False)


# -- sidecar arrays ---------------------------------------------------------------------------------------------
def test_a_missing_sidecar_is_an_error_naming_the_file_and_line(tmp_path):
    filled(tmp_path, 3, arrays=True)
    key = recs(3)[1].key
    (tmp_path / "arrays" / f"{key}.npz").unlink()
    with pytest.raises(StoreError, match=rf"line 2.* arrays/{key}.npz is missing"):
        Store(tmp_path).load_arrays(key)
    assert Store(tmp_path).load_arrays(recs(3)[0].key)["e"][0] == 0.0


def test_a_corrupt_or_swapped_sidecar_is_an_error_never_a_wrong_array(tmp_path):
    st = filled(tmp_path, 3, arrays=True)
    k0, k1, k2 = (r.key for r in recs(3))
    a = tmp_path / "arrays"
    (a / f"{k1}.npz").write_bytes((a / f"{k1}.npz").read_bytes()[:40])  # torn
    with pytest.raises(StoreError, match=f"arrays/{k1}.npz of record {k1} .line 2"):
        st.load_arrays(k1)
    (a / f"{k2}.npz").write_bytes((a / f"{k0}.npz").read_bytes())  # a valid file of another record
    with pytest.raises(StoreError, match=f"arrays/{k2}.npz .* corrupt or was replaced"):
        st.load_arrays(k2)
    assert st.verify() and all("arrays/" in p for p in st.verify())


def test_a_failed_sidecar_write_leaves_no_temporary_file_and_no_record(tmp_path, monkeypatch):
    st = filled(tmp_path, 1, arrays=True)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records_module, "_write_all", full)  # the disk fills while the sidecar is written
    with pytest.raises(StoreError, match="no space left on the device"):
        st.append(recs(2, arrays=True)[1])
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == [f"{recs(1)[0].key}.npz"]
    assert len(Store(tmp_path).raw()) == 1


def test_a_failed_line_write_leaves_the_store_unchanged(tmp_path, monkeypatch):
    st = filled(tmp_path, 2)
    before = st.file.read_bytes()
    real = os.fsync

    def fsync(fd):  # the device reports the write failed (delayed allocation, a full disk)
        if os.readlink(f"/proc/self/fd/{fd}").endswith("records.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreError, match="no space left on the device"):
        st.append(recs(3)[2])
    monkeypatch.setattr(os, "fsync", real)
    assert st.file.read_bytes() == before and len(Store(tmp_path).raw()) == 2


# -- concurrent writers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("exist_ok, n_proc", [(False, 2), (True, 3)])
def test_concurrent_writers_never_store_a_key_twice(tmp_path, exist_ok, n_proc):
    n = 60
    start = time.time() + 1.5  # all processes start appending the same keys at once
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), str(n), str(start), "1" if exist_ok else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n_proc)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    keys = [json.loads(s)["key"] for s in Store(tmp_path).file.read_bytes().splitlines()]
    assert len(keys) == n == len(set(keys)), "a key was written twice (or lost)"
    st = Store(tmp_path)
    for d in st.raw():  # every value and sidecar is its own
        assert st.load_arrays(d["key"])["e"][0] == -d["value"] == d["point"]["i"]
    if not exist_ok:
        done = [json.loads(o)["written"] for o, _ in outs]
        assert sorted(sum(done, [])) == list(range(n)), "each key written by exactly one process"
        assert all(len(json.loads(o)["refused"]) + len(w) == n for (o, _), w in zip(outs, done, strict=True))
    assert not list((tmp_path / "arrays").glob(".*.tmp.npz"))


def test_concurrent_batch_writers_never_store_a_key_twice(tmp_path):
    """Store.extend: three processes write the same 60 keys in overlapping batches of 7, at once."""
    n = 60
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), str(n), str(start), "1", "7", str(17 * k)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    keys = [json.loads(s)["key"] for s in Store(tmp_path).file.read_bytes().splitlines()]
    assert len(keys) == n == len(set(keys)), "a key was written twice (or lost)"
    st = Store(tmp_path)
    for d in st.raw():
        assert st.load_arrays(d["key"])["e"][0] == -d["value"] == d["point"]["i"]
    assert st.verify() == [] and not list((tmp_path / "arrays").glob(".*.tmp.npz"))


def test_a_batch_is_refused_whole_when_one_key_is_stored_and_kept_in_order_otherwise(tmp_path):
    rs = recs(6, arrays=True)
    st = Store(tmp_path)
    assert st.extend(rs[:2]) == [r.key for r in rs[:2]]
    before = st.file.read_bytes()
    with pytest.raises(PihError, match="already stored"):
        st.extend([rs[3], rs[1], rs[4]])  # rs[1] is stored: nothing of the batch is written
    with pytest.raises(PihError, match="twice in one batch"):
        st.extend([rs[3], rs[3]])
    assert st.file.read_bytes() == before and sorted(p.name for p in (tmp_path / "arrays").iterdir()) == sorted(
        f"{r.key}.npz" for r in rs[:2]), "a refused batch left a line or a sidecar behind"
    assert st.extend([rs[3], rs[1], rs[3], rs[5], rs[4]], exist_ok=True) == [r.key for r in (rs[3], rs[1], rs[3],
                                                                                           rs[5], rs[4])]
    fresh = Store(tmp_path)
    assert [d["key"] for d in fresh.raw()] == [r.key for r in (rs[0], rs[1], rs[3], rs[5], rs[4])]
    assert [fresh.line_of(r.key) for r in (rs[3], rs[5], rs[4])] == [3, 4, 5]
    for r in rs[:2] + rs[3:]:
        assert fresh.get(r.key).value == r.value and fresh.load_arrays(r.key)["e"][0] == r.arrays["e"][0]
    assert fresh.verify() == [] and st.extend([]) == []


# -- failed measurements ----------------------------------------------------------------------------------------
def _grid(value_of, seed=0, ratios=(0.15, 0.2, 0.3), bits=(2, 3, 4, 8)):
    p0 = prov(seed=seed)
    P = [Prune(r) for r in ratios]
    Q = [Quantize(b) for b in bits]
    out = [Record(p0, (p,), -2 * p.ratio) for p in P] + [Record(p0, (q,), -1.6 / q.bits) for q in Q]
    for p in P:
        for q in Q:
            out.append(Record(p0, (p, q), value_of(p, q, "pq"), {"ratio": p.ratio, "bits": q.bits}))
            out.append(Record(p0, (q, p), value_of(p, q, "qp"), {"ratio": p.ratio, "bits": q.bits}))
    return out


def test_a_non_finite_metric_is_stored_as_it_is_flagged_and_excluded_with_a_count(tmp_path):
    def v(p, q, o):
        if (p.ratio, q.bits, o) == (0.2, 3, "qp"):
            return -math.inf  # an infinite perplexity
        return -2 * p.ratio - 1.6 / q.bits - (0.01 * q.bits if o == "pq" else 0.0)

    st = Store(tmp_path)
    for r in _grid(v):
        st.append(r)
    back = Store(tmp_path).records()
    bad = [r for r in back if not r.ok]
    assert len(bad) == 1 and bad[0].value == -math.inf and "non-finite" in bad[0].failed
    assert json.loads(lines(st)[[r.ok for r in back].index(False)])["failed"] == bad[0].failed
    res = analyze_grid(back, n_boot=20)
    assert res.n_failed == 1 and res.failed[0]["key"] == bad[0].key
    assert len(res.rows) == 11 and all(math.isfinite(r.advantage_qp) for r in res.rows)
    assert res.to_dict()["n_failed"] == 1


def test_an_older_overflow_placeholder_is_read_as_a_failure_not_a_number(tmp_path):
    st = Store(tmp_path)
    st.append(Record(prov(), (Prune(0.5),), -1e300, extras={"overflow": True}))  # what older versions wrote
    r = Store(tmp_path).records()[0]
    assert not r.ok and math.isnan(r.value) and "-1e300" in r.failed


def test_a_negative_seed_is_refused():
    with pytest.raises(PihError, match="seed=-1"):
        prov(seed=-1)


def test_threads_appending_the_same_keys_store_each_once(tmp_path):
    import threading

    shared = Store(tmp_path)
    rs = recs(18, arrays=True)
    errors = []

    def work(k):
        st = shared if k % 2 else Store(tmp_path)  # one shared object, and objects of their own
        try:
            for r in rs[k:] + rs[:k]:
                st.append(r, exist_ok=True)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    keys = [json.loads(s)["key"] for s in Store(tmp_path).file.read_bytes().splitlines()]
    assert sorted(keys) == sorted(r.key for r in rs)
    assert Store(tmp_path).verify() == []


def test_stale_temporary_sidecars_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """A writer killed between writing its temporary sidecar and renaming it leaves ``.KEY.PID.*.tmp.npz``; the next
    append removes those of processes that are gone and keeps those of live ones (still writing)."""
    st = filled(tmp_path, n=1, arrays=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        adir = tmp_path / "arrays"
        stale = adir / f".abc.{dead_pid}.0123abcd.tmp.npz"
        busy = adir / f".abd.{live.pid}.4567abcd.tmp.npz"
        stale.write_bytes(b"partial")
        busy.write_bytes(b"partial")
        st.append(recs(2, arrays=True)[1])
        assert not stale.exists(), "a dead writer's temporary sidecar was left behind"
        assert busy.exists(), "a live writer's temporary sidecar was removed under it"
    finally:
        live.kill()
        live.wait()
