"""`pih simulate` killed at random points and resumed, against an uninterrupted run of the same preset; the
compare command's tensor cache torn by a killed export."""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from faultkit import kill_when, lines_in, start

pytest.importorskip("jax")

from pih import Provenance, Prune, Quantize, Record, Store  # noqa: E402
from pih.cli import main  # noqa: E402
from pih.errors import PihWarning  # noqa: E402

PRESET = ("--preset", "harma", "--quick", "--seeds", "2", "--no-progress", "--format", "json")
COMPARE_CHILD = Path(__file__).with_name("_compare_child.py")


def raw(store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PihWarning)
        return Store(store).raw()


def test_simulate_killed_at_a_random_point_resumes_to_the_uninterrupted_result(tmp_path, rng):
    ref = start("simulate", *PRESET, "--out", tmp_path / "ref")  # on the other core, at the same time
    killed = start("simulate", *PRESET, "--out", tmp_path / "run")
    n_total = 304
    at = kill_when(killed, tmp_path / "run" / "store" / "records.jsonl", rng.randint(1, n_total - 80),
                   signal.SIGKILL, rng.uniform(0, 0.05))  # before the last pairing's records
    killed.wait(timeout=60)
    before = {d["key"]: d for d in raw(tmp_path / "run" / "store")}
    assert killed.returncode == -signal.SIGKILL and at <= len(before) < n_total, "the kill must land mid-run"
    again = start("simulate", *PRESET, "--out", tmp_path / "run")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    out_ref, err_ref = ref.communicate(timeout=300)
    assert ref.returncode == 0, err_ref
    lines = (tmp_path / "run" / "store" / "records.jsonl").read_bytes().splitlines()
    keys = [json.loads(s)["key"] for s in lines]
    assert len(keys) == len(set(keys)) == n_total, "records lost or duplicated"
    final = {d["key"]: d for d in raw(tmp_path / "run" / "store")}
    want = {d["key"]: d for d in raw(tmp_path / "ref" / "store")}
    assert set(final) == set(want)
    assert all(final[k]["value"] == want[k]["value"] for k in want), "a value differs from the uninterrupted run"
    assert all(final[k]["created"] == d["created"] for k, d in before.items()), "a stored record was rewritten"
    s, s_ref = json.loads(out), json.loads(out_ref)  # the summary (from the store) is the uninterrupted one
    assert {k: v for k, v in s.items() if k != "out"} == {k: v for k, v in s_ref.items() if k != "out"}


# -- pih compare: the layer-tensor cache ----------------------------------------------------------------------------
RATIOS, BITS = (0.25, 0.5), (2, 4)


def _store(path):
    st = Store(path)
    for seed in (0, 1):
        prov = Provenance(backend="torch", model="synthetic", data="t:test", metric="neg_perplexity", seqlen=16,
                          calibration="t:train:random-windows", calibration_size=4, seed=seed,
                          settings={"bridge": {"offgrid": "requantize"}})
        for i, p in enumerate(RATIOS):
            for j, b in enumerate(BITS):
                ps, qs = Prune(p, criterion="wanda"), Quantize(b, symmetric=False)
                st.append(Record(prov, (ps, qs), -10.0, {"prune": p, "quant": b, "order": "P->Q"}))
                st.append(Record(prov, (qs, ps), -10.0 + (i - j) * (1 + 0.1 * seed),
                                 {"prune": p, "quant": b, "order": "Q->P"}))
    return st


def synthetic_export(grid, seed, path, max_tokens, model=None):
    """What export_for writes, for a synthetic model (meta: protocol and seed of the records)."""
    g = np.random.default_rng(seed)
    out = {"meta": np.array(json.dumps({"model": "synthetic", "protocol": grid.protocol, "seed": int(seed)}))}
    for name in ("b0.q", "b1.q"):
        out[f"W::{name}"] = g.standard_normal((8, 16)).astype(np.float32)
        out[f"X::{name}"] = (g.standard_normal((48, 16)) * np.exp(g.standard_normal(16))).astype(np.float32)
    np.savez_compressed(path, **out)
    return Path(path)


def _compare(capsys, store):
    rc = main(["compare", str(store), "--assumptions", "A1", "--seed", "0", "--no-progress", "--format", "json"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_a_torn_tensor_cache_is_detected_and_exported_again(tmp_path, capsys, monkeypatch, rng):
    import pih.commands.compare as cmp

    monkeypatch.setattr(cmp, "export_for", synthetic_export)
    st = _store(tmp_path / "s")
    rc, out, err = _compare(capsys, st.path)
    assert rc == 0, err
    first = json.loads(out)
    cache = Path(first["tensors"][0])
    blob = cache.read_bytes()
    cache.write_bytes(blob[: rng.randrange(1, len(blob))])  # what a killed export used to leave
    rc, out, err = _compare(capsys, st.path)
    assert rc == 0, err
    assert "warning:" in err and "exported again" in err
    def scores(res):  # the cost columns are wall time (the second run exports again), the rest must be equal
        return [{k: v for k, v in r.items() if k not in ("cost_seconds", "cost_ratio")} for r in res["results"]]

    assert scores(json.loads(out)) == scores(first) and cache.read_bytes() == blob


def test_a_compare_killed_during_its_export_leaves_no_torn_cache(tmp_path, capsys, monkeypatch):
    import pih.commands.compare as cmp

    st = _store(tmp_path / "s")
    child = subprocess.Popen([sys.executable, str(COMPARE_CHILD), str(st.path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout.readline().strip() == "half written", child.stderr.read()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert not list(st.path.glob("compare_tensors_*.npz")), "a torn cache under the cache's own name"
    assert len(list(st.path.glob(".compare_tensors_*.tmp.npz"))) == 1
    monkeypatch.setattr(cmp, "export_for", synthetic_export)
    rc, out, err = _compare(capsys, st.path)
    assert rc == 0 and "warning" not in err, err
    assert not list(st.path.glob(".compare_tensors_*.tmp.npz")), "the killed export's temporary file is removed"
    assert lines_in(st.file) == 16


def test_given_tensors_that_are_corrupt_are_one_line(tmp_path, capsys):
    st = _store(tmp_path / "s")
    bad = tmp_path / "t.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    rc = main(["compare", str(st.path), "--tensors", str(bad), "--assumptions", "A1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a readable tensor file" in err and len(err.strip().splitlines()) == 1
