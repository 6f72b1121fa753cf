"""Every error a user can cause: one line naming the problem on stderr, a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

import pytest

from pih import Provenance, Prune, Quantize, Record, Store
from pih.cli import main


def one_line(err: str, cmd: str) -> str:
    got = [s for s in err.splitlines() if s.strip()]
    assert len(got) == 1, f"expected one line, got:\n{err}"
    assert got[0].startswith(f"pih {cmd}: ") and "Traceback" not in err
    return got[0]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def prov(seed=0):
    return Provenance(backend="sim", model="gauss", data="synthetic", metric="-rel_err", seed=seed, versions={})


def grid_store(path, seeds=(0,)):
    """A small pruning x quantization grid (each method alone, both orders) whose CERs are all measured."""
    st = Store(path)
    for s in seeds:
        P = [Prune(r) for r in (0.15, 0.2, 0.3)]
        Q = [Quantize(b) for b in (2, 3, 4, 8)]
        for p in P:
            st.append(Record(prov(s), (p,), -2 * p.ratio))
        for q in Q:
            st.append(Record(prov(s), (q,), -1.6 / q.bits))
        for i, p in enumerate(P):
            for j, q in enumerate(Q):
                base = -2 * p.ratio - 1.6 / q.bits
                st.append(Record(prov(s), (p, q), base - 0.01 * (i - j), {"ratio": p.ratio, "bits": q.bits}))
                st.append(Record(prov(s), (q, p), base, {"ratio": p.ratio, "bits": q.bits}))
    return st


def test_a_json_line_that_is_not_a_record(tmp_path, capsys):
    st = grid_store(tmp_path)
    with open(st.file, "ab") as fh:
        fh.write(b'{"hello": "world"}\n')
    n = len(st.file.read_bytes().splitlines())
    for cmd in ("records", "analyze"):
        rc, _, err = run(capsys, cmd, tmp_path)
        assert rc == 2 and f"line {n} is not a record" in one_line(err, cmd)


@pytest.mark.parametrize("value", ["'-0.5'", "null"])
def test_a_record_whose_value_is_a_string_or_null(tmp_path, capsys, value):
    st = grid_store(tmp_path)
    d = json.loads(st.file.read_bytes().splitlines()[4])
    d.pop("check", None)
    d["value"] = json.loads(value.replace("'", '"'))
    with open(st.file, "ab") as fh:
        fh.write(json.dumps(d).encode() + b"\n")
    for cmd in ("records", "analyze"):
        rc, _, err = run(capsys, cmd, tmp_path)
        line = one_line(err, cmd)
        assert rc == 2 and "line 32 holds value=" in line and "must be a number" in line


def test_a_conflicting_duplicate_is_refused_by_every_command(tmp_path, capsys):
    st = grid_store(tmp_path)
    d = json.loads(st.file.read_bytes().splitlines()[0])
    d.pop("check", None)
    d["value"] = 1.0
    with open(st.file, "ab") as fh:
        fh.write(json.dumps(d).encode() + b"\n")
    for cmd in ("records", "analyze"):
        rc, _, err = run(capsys, cmd, tmp_path)
        assert rc == 2 and "line 1: -0.3" in one_line(err, cmd) and "line 32: 1.0" in err


def test_records_limit_must_not_be_negative(tmp_path, capsys):
    grid_store(tmp_path)
    rc, _, err = run(capsys, "records", tmp_path, "--limit", "-1")
    assert rc == 2 and "--limit=-1" in one_line(err, "records")
    rc, out, _ = run(capsys, "records", tmp_path, "--limit", "0")
    assert rc == 0 and out.splitlines()[1] == "... 31 more (--limit)"


def test_boot_zero_is_refused_not_a_silent_nan_interval(tmp_path, capsys):
    grid_store(tmp_path)
    rc, out, err = run(capsys, "analyze", tmp_path, "--boot", "0")
    assert rc == 2 and "--boot=0" in one_line(err, "analyze") and "nan" not in out
    rc, out, _ = run(capsys, "analyze", tmp_path, "--boot", "50")
    assert rc == 0 and "95% CI" in out and "nan" not in out


@pytest.mark.parametrize("base", ["nan", "inf", "-2", "0"])
def test_base_must_be_a_finite_positive_number(tmp_path, capsys, base):
    rc, out, err = run(capsys, "cer", "--bits", "2", "4", "8", "--perf", "-9", "-5", "-4", "--value", "-6",
                       "--base", base)
    assert rc == 2 and "--base=" in one_line(err, "cer") and "nan" not in out
    grid_store(tmp_path)
    rc, out, err = run(capsys, "analyze", tmp_path, "--base", base)
    assert rc == 2 and "--base=" in one_line(err, "analyze")


def test_simulate_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run(capsys, "simulate", "--preset", "kuzmin", "--quick", "--no-progress", "--out", f)
    assert rc == 2 and "is a file" in one_line(err, "simulate")
    rc, _, err = run(capsys, "simulate", "--preset", "kuzmin", "--quick", "--out", f / "sub")
    assert rc == 2 and "is a file" in one_line(err, "simulate")
    rc, _, err = run(capsys, "report", "--out", f)
    assert rc == 2 and "is a file" in one_line(err, "report")


def test_sigint_and_internal_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import pih.commands.records as cmd

    grid_store(tmp_path)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmd, "run", interrupted)
    rc, _, err = run(capsys, "records", tmp_path)
    assert rc == 130 and one_line(err, "records") == "pih records: interrupted"

    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(cmd, "run", broken)
    monkeypatch.delenv("PIH_TRACEBACK", raising=False)
    rc, _, err = run(capsys, "records", tmp_path)
    assert rc == 70 and "internal error: KeyError" in one_line(err, "records")


def test_records_into_a_closed_pipe(tmp_path):
    st = Store(tmp_path)
    for i in range(1500):
        st.append(Record(prov(), (Prune(0.5),), -float(i), {"i": i}))
    env = {**os.environ, "PYTHONUNBUFFERED": "0"}
    p = subprocess.Popen([sys.executable, "-m", "pih.cli", "records", str(tmp_path), "--limit", "1500"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout.readline().startswith(b"1500 records")  # `| head -1`
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141
    assert "broken pipe" in one_line(err, "records")


def test_simulate_threads_must_be_a_count(tmp_path, capsys):
    rc, _, err = run(capsys, "simulate", "--preset", "kuzmin", "--quick", "--threads", "-1", "--out", tmp_path / "o")
    assert rc == 2 and "--threads" in one_line(err, "simulate") and ">= 0" in err
