"""The verification report: every section that this installation can run, written to one folder."""

from __future__ import annotations

import sys
from pathlib import Path


def build_report(out: str) -> int:
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    print("pih report: no sections available yet", file=sys.stderr)
    return 0
