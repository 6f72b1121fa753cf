"""The store and its sidecars broken for real: truncated and corrupted at random bytes, a full disk, writers
killed at random points. Every record read is one that was written; every loss is reported with its line or file."""

import json
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from faultkit import kill_when

from pih import Provenance, Prune, Quantize, Record, Store
from pih.errors import PihWarning, StoreError

SWEEP_CHILD = Path(__file__).parents[1] / "core" / "_sweep_child.py"


def prov():
    return Provenance(backend="sim", model="gauss", data="synthetic", metric="-rel_err", versions={})


def make(path, n=12, arrays_every=3, rng=None):
    st = Store(path)
    gen = np.random.default_rng(0)
    out = []
    for i in range(n):
        arrays = {"e": gen.standard_normal(64), "o": np.arange(8) + i} if i % arrays_every == 0 else None
        r = Record(prov(), (Prune(round(0.02 * (i + 1), 2)), Quantize(2 + i % 6)), -gen.random(), {"i": i},
                   {"note": "x" * (i * 7)}, arrays)
        st.append(r)
        out.append(r)
    return st, out


def read(path):
    """(records, warnings) of a store, or the StoreError it raises."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", PihWarning)
        try:
            return Store(path).records(), [str(x.message) for x in w]
        except StoreError as exc:
            return exc, [str(x.message) for x in w]


def test_the_store_truncated_at_random_bytes_shows_exactly_the_complete_records(tmp_path, rng):
    src, recs = make(tmp_path / "src")
    data = src.file.read_bytes()
    ends = [i for i, b in enumerate(data) if b == ord("\n")]  # offset of each line's newline
    for trial in range(25):
        cut = rng.randrange(0, len(data))
        d = tmp_path / f"t{trial}"
        shutil.copytree(src.path, d)
        (d / "records.jsonl").write_bytes(data[:cut])
        got, warns = read(d)
        complete = sum(e <= cut for e in ends)  # a line cut just before its newline is still complete
        assert [r.key for r in got] == [r.key for r in recs[:complete]]
        assert [r.value for r in got] == [r.value for r in recs[:complete]]
        torn = data[ends[complete - 1] + 1 if complete else 0: cut]
        assert bool(warns) == bool(torn.strip()), warns  # a torn line is reported, a complete one is not
        new = Record(prov(), (Prune(0.9),), -9.0, {"i": 99})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PihWarning)
            Store(d).append(new)
            back = Store(d).records()
        assert [r.key for r in back] == [r.key for r in recs[:complete]] + [new.key], "the next append lost data"
        if torn.strip():  # and the torn bytes are kept aside, not deleted
            assert (d / "records.torn").read_bytes() == torn + b"\n"


def test_random_byte_corruption_is_reported_with_its_line_never_read_as_right(tmp_path, rng):
    src, recs = make(tmp_path / "src")
    data = src.file.read_bytes()
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == ord("\n")][:-1]
    for trial in range(40):
        pos = rng.randrange(0, len(data))
        flipped = bytearray(data)
        flipped[pos] ^= rng.randrange(1, 256)
        d = tmp_path / f"c{trial}"
        shutil.copytree(src.path, d)
        (d / "records.jsonl").write_bytes(bytes(flipped))
        line = max(i for i, s in enumerate(starts) if s <= pos) + 1
        got, warns = read(d)
        if pos == len(data) - 1:  # the final newline: the last line now looks torn, and says so
            assert isinstance(got, list) and len(got) == len(recs) - 1
            assert any(f"line {line} is incomplete" in w for w in warns)
        else:
            assert isinstance(got, StoreError), f"byte {pos} (line {line}) changed, the store read as sound"
            assert f"line {line}" in str(got)


def test_sidecars_truncated_or_corrupted_at_random_bytes_are_errors_naming_the_file(tmp_path, rng):
    src, recs = make(tmp_path / "src")
    with_arrays = [r for r in recs if r.arrays]
    for trial in range(20):
        d = tmp_path / f"s{trial}"
        shutil.copytree(src.path, d)
        victim = rng.choice(with_arrays)
        f = d / "arrays" / f"{victim.key}.npz"
        blob = bytearray(f.read_bytes())
        if trial % 3 == 0:
            blob = blob[: rng.randrange(0, len(blob))]
        elif trial % 3 == 1:
            blob[rng.randrange(0, len(blob))] ^= rng.randrange(1, 256)
        else:
            f.unlink()
            blob = None
        if blob is not None:
            f.write_bytes(bytes(blob))
        st = Store(d)
        with pytest.raises(StoreError, match=f"arrays/{victim.key}.npz"):
            st.load_arrays(victim.key)
        line = [r.key for r in recs].index(victim.key) + 1
        assert any(f"line {line}" in p for p in st.verify())
        for r in with_arrays:  # the others are intact
            if r.key != victim.key:
                got = st.load_arrays(r.key)
                assert all(np.array_equal(got[k], r.arrays[k]) for k in r.arrays)


def test_a_full_disk_refuses_the_record_and_keeps_the_store_sound(tmp_path, small_fs):
    fs = small_fs(256 * 1024)
    st = Store(fs / "s")
    gen = np.random.default_rng(1)
    stored, err = [], None
    for i in range(200):
        r = Record(prov(), (Prune(round(0.001 * (i + 1), 3)),), -float(i), {"i": i},
                   arrays={"e": gen.standard_normal(1500)})  # about 12 kB of incompressible data
        try:
            st.append(r)
            stored.append(r)
        except StoreError as exc:
            err = exc
            break
    assert err is not None and "no space left on the device" in str(err) and "unchanged" in str(err)
    assert 0 < len(stored) < 200
    data = st.file.read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == len(stored)
    back = Store(fs / "s")
    assert [x.key for x in back.records()] == [x.key for x in stored]
    assert back.verify() == [] and not list((fs / "s" / "arrays").glob(".*.tmp.npz"))
    (fs / "s" / "arrays" / f"{stored[0].key}.npz").unlink()  # free some space: the same record goes in now
    with pytest.raises(StoreError, match="is missing"):
        back.load_arrays(stored[0].key)
    retry = Record(prov(), (Prune(round(0.001 * (len(stored) + 1), 3)),), -float(len(stored)),
                    {"i": len(stored)}, arrays={"e": np.zeros(8)})
    back.append(retry)
    assert back.records()[-1].key == retry.key


def test_a_writer_killed_at_random_points_loses_and_duplicates_nothing(tmp_path, rng):
    n, store = 40, tmp_path / "store"
    seen: dict[str, dict] = {}
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, str(SWEEP_CHILD), str(store), str(tmp_path / f"log{round_}"),
                                  str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        at = len(seen) + rng.randint(1, 8)
        kill_when(child, store / "records.jsonl", at, signal.SIGKILL, rng.uniform(0, 0.06))
        child.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PihWarning)
            now = {d["key"]: d for d in Store(store).raw()}
        for k, d in seen.items():  # nothing stored before is lost or changed
            assert now[k] == d
        seen = now
    out = subprocess.run([sys.executable, str(SWEEP_CHILD), str(store), str(tmp_path / "log-final"), str(n)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    keys = [json.loads(s)["key"] for s in (store / "records.jsonl").read_bytes().splitlines()]
    assert len(keys) == len(set(keys)) == n
    st = Store(store)
    for d in st.raw():
        assert d["value"] == -(d["point"]["i"] ** 0.5) and st.load_arrays(d["key"])["e"][0, 0] == d["point"]["i"]
    assert st.verify() == [], "leftover temporary files or broken sidecars"
