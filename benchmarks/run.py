"""Run every benchmark (benchmarks/bench_*.py), each in its own process, and print their ratios.

Each benchmark measures its baseline in the same run and prints ratios; nothing here is a pass/fail test.
Usage: python -m benchmarks.run [NAME ...]   (NAME: sim, bridge, ...)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    here = Path(__file__).parent
    found = sorted(here.glob("bench_*.py"))
    if names:
        found = [f for f in found if f.stem.removeprefix("bench_") in names]
        if not found:
            print(f"no benchmark named {names}; have: {[f.stem for f in here.glob('bench_*.py')]}", file=sys.stderr)
            return 2
    rc = 0
    for f in found:
        print(f"== {f.stem} ==", flush=True)
        r = subprocess.run([sys.executable, "-m", f"benchmarks.{f.stem}"], cwd=here.parent)
        rc = rc or r.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
