"""Benchmark (not a test): ``pih run experiments/smoke.toml`` end to end, warm, against the same run tokenizing its
splits (the token cache off), the same with two threads, and optionally against another source tree, in the
same interleaved run.

    python -m benchmarks.bench_startup [--repeats 3] [--config experiments/smoke.toml] [--baseline SRC]

Each run is a fresh process into a fresh store (nothing resumed); the model is cached (trained once, outside the
timing) and the tokenized corpora are cached by the first, untimed, run. Runs alternate A B [C] D A B [C] D ...:
A = this tree, warm (token cache on); B = this tree with ``PIH_TOKEN_CACHE=0`` (the whole training split tokenized
to draw the calibration windows, as before the cache); C = ``--baseline SRC``, another checkout of pih (e.g. an
older commit, ``git archive``) run with the same interpreter; D = the config with ``threads = 2`` (a copy in a
temporary folder), what the thread policy (``pih.threads``) advises on a machine known to be idle, its records
checked equal to A's as bench_ray checks its runs (``science``: keys, values, failures, extras but timings,
sidecar arrays; the benchmark exits 1 where they differ). Printed: wall seconds and peak
resident memory of each (median), and the ratios B/A, C/A and D/A per pair (median). Targets: A under 12 s on 2
cores, peak under 600 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from benchmarks.bench_ray import science

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit status of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_maxrss / 1024, p.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="pih run of the smoke config, warm, against its baselines (ratios)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", default="experiments/smoke.toml")
    ap.add_argument("--baseline", default=None, help="another pih source tree to run the same config with")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pih-bench-startup-"))
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    variants = {"A warm": (ROOT, base_env), "B token cache off": (ROOT, {**base_env, "PIH_TOKEN_CACHE": "0"})}
    if args.baseline:
        src = Path(args.baseline).resolve()
        if not (src / "pih" / "cli.py").is_file():
            print(f"--baseline {src}: not a pih source tree (no pih/cli.py)", file=sys.stderr)
            return 2
        variants["C baseline"] = (src, {**base_env, "PYTHONPATH": str(src)})
    config = str((ROOT / args.config).resolve())
    two = _with_threads(Path(config), 2, tmp)
    if two is None:
        print(f"{args.config}: cannot set threads in a copy (no [experiment] table, or the edit changed more)",
              file=sys.stderr)
        return 2
    variants["D threads = 2"] = (ROOT, base_env)

    def cmd(name, k):
        cfg = str(two) if name.startswith("D") else config
        return [sys.executable, "-m", "pih.cli", "run", cfg, "--out", str(tmp / f"{name[0]}{k}"), "--format",
                "json", "--no-progress"]

    _, _, rc = _run(cmd("warmup", 0), base_env, ROOT)  # trains the model if needed, fills the token cache
    if rc:
        print(f"the warm-up run failed (exit {rc}): {' '.join(cmd('warmup', 0))}", file=sys.stderr)
        return 1
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for k in range(args.repeats):
        for name, (cwd, env) in variants.items():
            w, peak, rc = _run(cmd(name, k + 1), env, cwd)
            if rc:
                print(f"{name} failed (exit {rc})", file=sys.stderr)
                return 1
            res[name].append((w, peak))
    print(f"pih run {args.config}: {args.repeats} interleaved rounds, load average {os.getloadavg()[0]:.2f} at the "
          f"end, {os.cpu_count()} cores")
    a = res["A warm"]
    out = {"config": args.config, "repeats": args.repeats, "rows": {}}
    for name, rows in res.items():
        ws, ps = [w for w, _ in rows], [p for _, p in rows]
        ratio = statistics.median([w / aw for (w, _), (aw, _) in zip(rows, a, strict=True)])
        out["rows"][name] = {"wall_s": ws, "peak_mib": ps, "ratio_to_A": ratio}
        print(f"  {name:<18} wall {statistics.median(ws):6.2f} s (min {min(ws):.2f}, max {max(ws):.2f})   peak "
              f"{statistics.median(ps):6.0f} MiB" + ("" if name == "A warm" else f"   x{ratio:.2f} the time of A"))
    same = science(tmp / "A1") == science(tmp / "D1")
    out["threads_2_records_identical"] = same
    print(f"records of D (threads = 2) and A (the config's threads): {'identical' if same else 'DIFFERENT'}")
    print("targets: A under 12 s on 2 cores, peak under 600 MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if same else 1  # a thread count that changed a record is a failure, not a timing


def _with_threads(config: Path, n: int, tmp: Path) -> Path | None:
    """A copy of ``config`` in ``tmp`` with ``threads = n`` in its [experiment] table, checked by parsing it back:
    the same config but that one setting (None: no [experiment] table, or an edit that would change more)."""
    text = config.read_text()
    m = re.search(r"^\[experiment\][ \t]*\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)  # up to the next table
    if m is None:
        return None
    body, line = m.group(1), f"threads = {n}"
    body = (re.sub(r"^threads\s*=.*$", line, body, count=1, flags=re.M) if re.search(r"^threads\s*=", body, re.M)
            else f"{line}\n{body}")
    edited = text[:m.start(1)] + body + text[m.end(1):]
    want = tomllib.loads(text)
    want["experiment"]["threads"] = n
    if tomllib.loads(edited) != want:
        return None
    out = tmp / f"threads{n}-{config.name}"
    out.write_text(edited)
    return out


if __name__ == "__main__":
    sys.exit(main())
