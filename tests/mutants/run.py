"""Curated mutation check: apply each listed mutant of the core, the simulation and the bridge kernels (and the
store) to a scratch copy of the project, run the tests that should catch it, and report which survive.

Usage (``make mutants`` runs it with no arguments)::

    python tests/mutants/run.py                # every mutant in tests/mutants/catalog.toml
    python tests/mutants/run.py --only ID ...  # some of them
    python tests/mutants/run.py --list         # the catalogue

A mutant is *killed* when its tests fail (pytest exit status 1) and *survives* when they pass. The unmutated copy
must pass the same tests first (otherwise the check itself is broken, and it says so). A mutant whose text is not
found exactly once, or whose mutated file does not compile, is an error of the catalogue, not a kill. Exit status:
0 when every mutant is killed, 1 when any survives, 2 on a catalogue or baseline error.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOG = Path(__file__).with_name("catalog.toml")


def load_catalog() -> list[dict]:
    data = tomllib.loads(CATALOG.read_text())
    muts = data.get("mutant", [])
    ids = [m["id"] for m in muts]
    if len(set(ids)) != len(ids):
        raise SystemExit("catalog: duplicate mutant ids")
    for m in muts:
        missing = {"id", "file", "find", "replace", "tests", "why"} - set(m)
        if missing:
            raise SystemExit(f"catalog: mutant {m.get('id')!r} lacks {sorted(missing)}")
    return muts


def project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def scratch_copy() -> Path:
    dst = Path(tempfile.mkdtemp(prefix="pih-mutants-"))
    for f in project_files():
        if f.startswith("results/"):
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    return dst


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[int, float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)  # the scratch copy's packages, not the installed ones
    env.setdefault("HYPOTHESIS_PROFILE", "ci")
    env.setdefault("PIH_TEST_CACHE", str(Path.home() / ".cache" / "pih-mutants"))
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = p.returncode, (p.stdout + p.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        code, tail = -1, "timeout"
    return code, time.time() - t0, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="print the catalogue and exit")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per mutant (default 900)")
    args = ap.parse_args(argv)
    muts = load_catalog()
    if args.list:
        for m in muts:
            print(f"{m['id']:<28} {m['file']:<28} {m['why']}")
        print(f"{len(muts)} mutants")
        return 0
    if args.only:
        unknown = set(args.only) - {m["id"] for m in muts}
        if unknown:
            print(f"unknown mutant ids: {sorted(unknown)}", file=sys.stderr)
            return 2
        muts = [m for m in muts if m["id"] in args.only]
    copy = scratch_copy()
    try:
        for m in muts:  # the catalogue's texts must still match the code
            src = (copy / m["file"]).read_text()
            n = src.count(m["find"])
            if n != 1:
                print(f"catalog error: {m['id']}: the text to replace occurs {n} times in {m['file']}",
                      file=sys.stderr)
                return 2
        tests = sorted({t for m in muts for t in m["tests"]})
        code, secs, tail = run_tests(copy, tests, args.timeout * 2)
        if code != 0:
            print(f"baseline: the unmutated tests fail (exit {code}); fix them first:\n{tail}", file=sys.stderr)
            return 2
        print(f"baseline: {len(tests)} test files pass unmutated ({secs:.0f} s)")
        survivors = []
        for m in muts:
            path = copy / m["file"]
            orig = path.read_text()
            path.write_text(orig.replace(m["find"], m["replace"], 1))
            try:
                py_compile.compile(str(path), doraise=True)
            except py_compile.PyCompileError as exc:
                path.write_text(orig)
                print(f"catalog error: {m['id']}: the mutated file does not compile: {exc.msg}", file=sys.stderr)
                return 2
            code, secs, tail = run_tests(copy, m["tests"], args.timeout)
            path.write_text(orig)
            if code == 1:
                verdict = "killed"
            elif code == 0:
                verdict = "SURVIVED"
                survivors.append(m["id"])
            else:
                verdict = f"killed? (exit {code})" if code != -1 else "timeout"
                if code in (-1, 2, 3, 4, 5):  # interrupted, usage error, internal error, no tests: not a kill
                    survivors.append(m["id"])
                    verdict = f"ERROR (exit {code})"
            print(f"{m['id']:<28} {verdict:<10} {secs:6.0f} s  {m['why']}", flush=True)
        print(f"\n{len(muts) - len(survivors)} of {len(muts)} mutants killed"
              + (f"; survivors: {', '.join(survivors)}" if survivors else ""))
        return 1 if survivors else 0
    finally:
        shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
