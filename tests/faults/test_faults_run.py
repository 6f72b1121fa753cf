"""`pih run` on the tiny LLaMA, broken for real: SIGINT and SIGKILL at random points, a full disk, a read-only
store, NaN weights, a folder without weights, inputs the model cannot support. Nothing lost, nothing duplicated,
nothing wrong reported as right, one clear line."""

import json
import math
import os
import random
import shutil
import signal
import subprocess
import time
import warnings

import numpy as np
import pytest
from faultkit import kill_when, lines_in, one_line, start

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pih import PihError, Store  # noqa: E402
from pih.cli import main  # noqa: E402
from pih.errors import PihWarning  # noqa: E402

N_POINTS = 13  # dense, 2 P, 2 Q, 2 x 2 x both orders
ATTEMPTS = 4  # interruptions tried, each in a fresh store, before a run that outpaces its watcher fails the test


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PihWarning)
        return fn()


def by_key(store_dir):
    return {d["key"]: d for d in quiet(lambda: Store(store_dir).raw())}


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a model is loaded (or trained)."""
    import pih.bridge.experiment as ex

    def refuse(self, *a, **k):
        raise AssertionError("a model was loaded before the run was validated")

    monkeypatch.setattr(ex.Runner, "__init__", refuse)


# -- SIGINT, then SIGKILL, at random points of one run; resumed; against an uninterrupted run ------------------------
@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_folder, tiny_source, cache, calib_text):
    from conftest import run_config

    rng = random.Random(f"{os.environ.get('PIH_FAULT_SEED', '0')}:pih-run")
    d = tmp_path_factory.mktemp("killed-run")
    cfg = run_config(d, tiny_source, cache, calib_text, "k", experiment={"analysis": True, "unit_arrays": True})
    ref = d / "ref"
    ref_proc = start("run", cfg, "--out", ref, "--no-progress", "--format", "json")  # on the other core
    # On a loaded machine the run can outpace its watcher (a point takes milliseconds): a signal that lands when
    # (nearly) every point is stored tests nothing, so the interruption is tried again in a fresh store. A run that
    # ignored SIGINT would finish every time and fail below.
    for attempt in range(ATTEMPTS):
        store = d / f"store{attempt}"
        p1 = start("run", cfg, "--out", store, "--no-progress")
        at_int = kill_when(p1, store / "records.jsonl", rng.randint(1, 5), signal.SIGINT, rng.uniform(0, 0.1))
        _, err1 = p1.communicate(timeout=120)
        after_int = by_key(store)
        if len(after_int) > N_POINTS - 3:
            continue
        p2 = start("run", cfg, "--out", store, "--no-progress")
        lo = len(after_int) + 1
        try:
            at_kill = kill_when(p2, store / "records.jsonl", rng.randint(lo, max(lo, N_POINTS - 3)), signal.SIGKILL,
                                rng.uniform(0, 0.1))
        except AssertionError:
            if p2.wait(timeout=60) != 0:
                raise
            continue  # the resumed run finished before its kill: again
        p2.wait(timeout=60)
        break
    else:
        pytest.fail(f"in {ATTEMPTS} attempts the run finished (nearly) every point before its signal landed "
                    f"(last: {len(after_int)} of {N_POINTS} points stored after SIGINT)")
    raw_after_kill = (store / "records.jsonl").read_bytes()
    after_kill = by_key(store)
    p3 = start("run", cfg, "--out", store, "--no-progress", "--format", "json")
    out3, err3 = p3.communicate(timeout=300)
    out_ref, err_ref = ref_proc.communicate(timeout=300)
    return {"p1": p1, "err1": err1, "at_int": at_int, "after_int": after_int, "p2": p2, "at_kill": at_kill,
            "raw_after_kill": raw_after_kill, "after_kill": after_kill, "p3": p3, "out3": out3, "err3": err3,
            "ref_proc": ref_proc, "out_ref": out_ref, "err_ref": err_ref, "store": store, "ref": ref}


def test_sigint_mid_run_is_one_line_and_keeps_every_finished_point(interrupted_run):
    r = interrupted_run
    assert r["p1"].returncode == 130
    line = one_line(r["err1"], "run")
    assert "interrupted" in line and "stored in" in line and "resume" in line
    assert r["at_int"] <= len(r["after_int"]) < N_POINTS


def test_sigkill_at_random_points_loses_duplicates_and_changes_nothing(interrupted_run):
    r = interrupted_run
    assert r["p2"].returncode == -signal.SIGKILL
    assert r["p3"].returncode == 0, r["err3"]
    assert r["ref_proc"].returncode == 0, r["err_ref"]
    final, ref = by_key(r["store"]), by_key(r["ref"])
    keys = [json.loads(s)["key"] for s in (r["store"] / "records.jsonl").read_bytes().splitlines()]
    assert len(keys) == len(set(keys)) == N_POINTS, "a point was lost or stored twice"
    assert set(final) == set(ref)
    for k, d in {**r["after_int"], **r["after_kill"]}.items():  # what was stored before a kill is kept as it was
        assert final[k]["value"] == d["value"] and final[k]["created"] == d["created"]
    for k, d in final.items():  # bitwise the values of the uninterrupted run
        assert d["value"] == ref[k]["value"], d["order"]
        assert d["extras"]["n_tokens"] == ref[k]["extras"]["n_tokens"]
    st, st_ref = Store(r["store"]), Store(r["ref"])
    with_arrays = [k for k, d in final.items() if d["arrays"]]
    assert len(with_arrays) == 4
    for k in with_arrays:
        a, b = st.load_arrays(k), st_ref.load_arrays(k)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a)
    assert quiet(st.verify) == [] and not list((r["store"] / "arrays").glob(".*.tmp.npz"))
    out, ref_out = json.loads(r["out3"]), json.loads(r["out_ref"])
    assert out["pairs"] == ref_out["pairs"] and out["n_failed"] == 0


def test_pih_run_refuses_a_store_with_a_conflicting_duplicate_before_loading(config, capsys, tmp_path,
                                                                           no_model_load):
    from pih import Provenance, Prune, Record

    st = Store(tmp_path / "s")
    st.append(Record(Provenance("torch", "m", "d", "neg_perplexity"), (Prune(0.5),), -3.0))
    d = json.loads(st.file.read_bytes())
    d.pop("check", None)
    d["value"] = -4.0  # the same key with another value, as an older version could write it
    with open(st.file, "ab") as fh:
        fh.write(json.dumps(d).encode() + b"\n")
    rc, _, err = cli(capsys, "run", config("dup"), "--out", tmp_path / "s")
    assert rc == 2 and "stored twice with different values (line 1: -3.0, line 2: -4.0)" in one_line(err, "run")


# -- inputs the model cannot support: refused before any model is loaded or trained ---------------------------------
def test_seqlen_above_the_model_positions_is_refused_before_training(tmp_path, config, capsys, tiny_folder):
    for cache in (tiny_folder.parents[1], tmp_path / "empty-cache"):  # trained, and not trained yet
        cfg = config("long", experiment={"cache": str(cache)}, data={"seqlen": 512, "eval_tokens": 1024})
        t0 = time.time()
        rc, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "s", "--no-progress")
        assert rc == 2 and time.time() - t0 < 60
        line = one_line(err, "run")
        assert "data.seqlen=512" in line and "max_position_embeddings = 256" in line
        assert not (tmp_path / "s").exists() and not list(tmp_path.glob("empty-cache/models/*"))


def test_symmetric_one_bit_is_refused_as_the_simulation_refuses_it(config, capsys, tmp_path, no_model_load):
    pytest.importorskip("jax")
    from pih import Quantize
    from sim.pipeline import stage_from_spec

    with pytest.raises(PihError) as sim_err:
        stage_from_spec(Quantize(1, symmetric=True))
    cfg = config("onebit", quantize={"bits": [1, 4], "symmetric": True})
    rc, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "s")
    assert rc == 2 and str(sim_err.value) in one_line(err, "run")
    stage_from_spec(Quantize(1, symmetric=False))  # an asymmetric 1-bit grid: accepted by both
    from pih.bridge.experiment import load_config

    load_config(config("onebit-asym", quantize={"bits": [1, 4], "symmetric": False}))


@pytest.mark.parametrize("section, key, value, why", [
    ("experiment", "seed", -1, "experiment.seed=-1"),
    ("experiment", "model_seed", -3, "experiment.model_seed=-3"),
    ("experiment", "threads", -1, "experiment.threads=-1"),
    ("experiment", "name", "/tmp/elsewhere", "experiment.name='/tmp/elsewhere'"),
    ("experiment", "name", "../up", "experiment.name='../up'"),
    ("data", "calibration_size", 0, "data.calibration_size=0"),
    ("data", "eval_tokens", 10, "data.eval_tokens=10"),
])
def test_bad_settings_are_refused_before_any_model_is_loaded(config, capsys, tmp_path, monkeypatch, no_model_load,
                                                             section, key, value, why):
    monkeypatch.chdir(tmp_path)
    cfg = config("bad", **{section: {key: value}})
    rc, _, err = cli(capsys, "run", cfg)  # no --out: the store would be results/runs/<name>
    assert rc == 2 and why in one_line(err, "run")
    assert not (tmp_path / "results").exists() and not os.path.exists("/tmp/elsewhere")


def test_train_refuses_a_negative_seed_before_training(tmp_path, capsys, monkeypatch):
    import pih.bridge.train as tr

    def refuse(*a, **k):
        raise AssertionError("trained before the seed was checked")

    monkeypatch.setattr(tr, "train_tiny_llama", refuse)
    rc, _, err = cli(capsys, "train", "tiny-llama", "--seed", "-1", "--cache", tmp_path)
    assert rc == 2 and "--seed=-1" in one_line(err, "train")
    rc, _, err = cli(capsys, "train", "tiny-llama", "--threads", "-1", "--cache", tmp_path)
    assert rc == 2 and "--threads=-1" in one_line(err, "train")


def test_eval_tokens_beyond_the_text_is_a_printed_and_recorded_adjustment(config, capsys, tmp_path, calib_text):
    short = tmp_path / "short.txt"
    short.write_text(calib_text.read_text()[:4000])  # its test split (the last 10 %): about 150 tokens
    cfg = config("short", data={"eval": str(short), "eval_tokens": 8192}, prune=None, quantize=None,
                 grid={"orders": ["dense"]})
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "s", "--no-progress", "--format", "json")
    assert rc == 0, err
    warn = [s for s in err.splitlines() if "warning:" in s]
    assert len(warn) == 1 and "data.eval_tokens: 8192 requested" in warn[0] and "whole windows of 64" in warn[0]
    doc = json.loads(out)
    rec = Store(tmp_path / "s").records()[0]
    used = rec.provenance.settings["eval_tokens"]
    assert used < 8192 and used % 64 == 0 and rec.extras["n_tokens"] == used
    assert rec.extras["adjustments"] == [{"name": "data.eval_tokens", "requested": 8192, "used": used,
                                          "why": rec.extras["adjustments"][0]["why"]}]
    assert doc["adjustments"] == [warn[0].split("warning: ", 1)[1]]


# -- non-finite results: stored as they are, flagged, excluded with a count, never a number --------------------------
def test_an_infinite_perplexity_is_stored_as_a_failure_and_excluded(config, capsys, tmp_path, monkeypatch):
    import pih.bridge.evaluate as ev

    real, calls = ev.perplexity, []

    def sometimes_inf(*a, **k):
        out = real(*a, **k)
        calls.append(1)
        return {**out, "ppl": math.inf, "nll": math.nan} if len(calls) == 7 else out  # (0.3, 3 bits) Q first

    monkeypatch.setattr(ev, "perplexity", sometimes_inf)
    rc, out, err = cli(capsys, "run", config("inf"), "--out", tmp_path / "s", "--no-progress", "--format", "json")
    assert rc == 3
    assert "1 of 13 points failed" in one_line(err, "run")
    doc = json.loads(out)
    pair = next(p for p in doc["pairs"] if (p["prune"], p["quant"]) == (0.3, 3))
    assert pair["A_QP"] is None and "non-finite ppl" in pair["failed"]
    assert all(p["A_QP"] is not None and math.isfinite(p["A_QP"]) for p in doc["pairs"] if p is not pair)
    bad = [r for r in Store(tmp_path / "s").records() if not r.ok]
    assert len(bad) == 1 and bad[0].value == -math.inf and bad[0].role == "Q->P"
    rc, out, _ = cli(capsys, "analyze", tmp_path / "s", "--format", "json", "--boot", "20")
    grid = json.loads(out)["grids"][0]
    assert rc == 0 and grid["n_failed"] == 1 and len(grid["rows"]) == 3
    assert all(math.isfinite(row["A_qp"]) for row in grid["rows"])
    rc, out, _ = cli(capsys, "records", tmp_path / "s")
    assert "1 failed" in out.splitlines()[0] and "FAILED (non-finite ppl" in out


def _model_copy(tiny_folder, dest, weights=True):
    dest.mkdir()
    for f in tiny_folder.iterdir():
        if weights or not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)
    return dest


def _nan_model(tiny_folder, dest):
    from safetensors.torch import load_file, save_file

    m = _model_copy(tiny_folder, dest)
    sd = load_file(str(m / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    sd[name][3, 5] = float("nan")
    save_file(sd, str(m / "model.safetensors"), metadata={"format": "pt"})
    return m, name


def test_a_nan_weight_is_never_reported_as_a_number(config, capsys, tmp_path, tiny_folder):
    m, _ = _nan_model(tiny_folder, tmp_path / "nan-model")
    cfg = config("nan", experiment={"model": str(m)}, prune={"ratios": [0.5]}, quantize={"bits": [4]})
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "s", "--no-progress")
    assert rc != 0
    one_line(err, "run")  # refused at load (2), or every point stored as failed (3)
    if (tmp_path / "s" / "records.jsonl").exists():
        recs = Store(tmp_path / "s").records()
        assert recs and all(not r.ok and not math.isfinite(r.value) for r in recs)
        rc, out, _ = cli(capsys, "analyze", tmp_path / "s", "--format", "json")
        doc = json.loads(out)
        assert rc == 0 and doc["grids"] == [] and doc["n_failed"] == len(recs)


def test_a_nan_weight_is_refused_at_load_naming_the_tensor(config, capsys, tmp_path, tiny_folder):
    m, name = _nan_model(tiny_folder, tmp_path / "nan-model")
    cfg = config("nan", experiment={"model": str(m)}, prune={"ratios": [0.5]}, quantize={"bits": [4]})
    rc, _, err = cli(capsys, "run", cfg, "--out", tmp_path / "s", "--no-progress")
    assert rc == 2 and name in one_line(err, "run") and not (tmp_path / "s").exists()


def test_a_model_folder_without_weights_is_one_line(config, capsys, tmp_path, tiny_folder):
    m = _model_copy(tiny_folder, tmp_path / "no-weights", weights=False)
    rc, _, err = cli(capsys, "run", config("nw", experiment={"model": str(m)}), "--out", tmp_path / "s")
    assert rc == 2 and str(m) in one_line(err, "run") and not (tmp_path / "s").exists()


def test_a_model_folder_with_truncated_weights_is_one_line(config, capsys, tmp_path, tiny_folder):
    m = _model_copy(tiny_folder, tmp_path / "truncated")
    w = m / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    rc, _, err = cli(capsys, "run", config("tr", experiment={"model": str(m)}), "--out", tmp_path / "s")
    assert rc == 2 and "model.safetensors" in one_line(err, "run")


# -- the store's file system fails: read-only, full --------------------------------------------------------------------
def _read_only(tmp_path, small_fs_or_none):
    """A read-only folder: a read-only tmpfs as root (where mounting is allowed), else a folder without write
    permission (which root would ignore)."""
    if os.geteuid() == 0:
        if small_fs_or_none is None:
            pytest.skip("root ignores file permissions, and this machine does not let the test mount a tmpfs")
        return small_fs_or_none(1 << 20, readonly=True)
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


@pytest.fixture
def maybe_fs(request):
    from faultkit import root_can_mount

    return None if root_can_mount() else request.getfixturevalue("small_fs")


def test_a_read_only_store_is_one_line_before_the_model_loads(config, capsys, tmp_path, maybe_fs, no_model_load):
    ro = _read_only(tmp_path, maybe_fs)
    rc, _, err = cli(capsys, "run", config("ro"), "--out", ro / "store")
    assert rc == 2 and "cannot be written" in one_line(err, "run")
    rc, _, err = cli(capsys, "simulate", "--preset", "kuzmin", "--quick", "--out", ro / "sim")
    assert rc == 2 and "cannot be written" in one_line(err, "simulate")


def test_an_existing_store_made_read_only_is_refused_with_one_line(config, capsys, tmp_path, small_fs):
    fs = small_fs(1 << 20)
    from pih import Provenance, Prune, Record

    Store(fs / "s").append(Record(Provenance("torch", "m", "d", "neg_perplexity"), (Prune(0.5),), -3.0))
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    rc, _, err = cli(capsys, "run", config("ro2"), "--out", fs / "s")
    assert rc == 2 and "read-only" in one_line(err, "run")
    from pih import Record as R

    with pytest.raises(PihError, match="read-only"):  # the store itself says so too
        Store(fs / "s").append(R(Provenance("torch", "m", "d", "neg_perplexity"), (Prune(0.4),), -3.0))


def _fill(folder, leave: int) -> None:
    """Fill the file system of ``folder`` to ``leave`` bytes of free space."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    with open(filler, "r+b") as fh:
        fh.truncate(max(0, filler.stat().st_size - leave))


def test_a_full_disk_mid_run_is_one_line_and_the_rerun_completes(config, capsys, tmp_path, small_fs):
    fs = small_fs(1 << 20)
    _fill(fs, 3 * 4096)  # room for a few records only
    cfg = config("full")
    rc, _, err = cli(capsys, "run", cfg, "--out", fs / "s", "--no-progress")
    assert rc == 2 and "no space left on the device" in one_line(err, "run")
    data = (fs / "s" / "records.jsonl").read_bytes()
    assert data.endswith(b"\n") and 0 < data.count(b"\n") < N_POINTS  # complete lines only
    kept = by_key(fs / "s")
    (fs / "filler").unlink()
    rc, _, err = cli(capsys, "run", cfg, "--out", fs / "s", "--no-progress")
    assert rc == 0, err
    final = by_key(fs / "s")
    assert lines_in(fs / "s" / "records.jsonl") == len(final) == N_POINTS
    assert all(final[k]["value"] == d["value"] for k, d in kept.items())


def test_advise_applies_the_same_rules_before_loading(capsys, cache, monkeypatch):
    import pih.bridge.models as models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the run was validated")

    monkeypatch.setattr(models, "load_model", refuse)
    base = ["advise", "tiny-llama", "--prune", "wanda:0.5", "--cache", cache]
    for extra, why in ((["--quantize", "rtn:1:sym"], "a symmetric grid needs at least 2 bits"),
                       (["--quantize", "rtn:4", "--seqlen", "512"], "max_position_embeddings = 256"),
                       (["--quantize", "rtn:4", "--seed", "-1"], "--seed=-1"),
                       (["--quantize", "rtn:4", "--threads", "-2"], "--threads=-2")):
        rc, _, err = cli(capsys, *base, *extra)
        assert rc == 2 and why in one_line(err, "advise")
