"""Compact, committed summaries of real-weight grids measured over seeds, and their plots.

    python experiments/summarize_runs.py RUN.json [RUN.json ...] [--out experiments/measured]

Each RUN.json is what ``pih run experiments/NAME.toml --format json`` printed (the experiment's store holds every
record; this keeps what a reader needs): the provenance, the seeds and models, per model the seed summary of the
grid (each point's A(Q→P) over calibration seeds with its mean, sd and noise floor, the per-line tests, the pooled
ρ with its cluster CI, the Theorem 2.0 bound), the monotonicity statistics, every measured point and the pair
analysis of every (model, seed, p, b) (owner errors, T1, interference). Writes ``OUT/NAME.json``,
``OUT/NAME.png`` (A(Q→P) against C*_P − C_Q, one panel per model, noise floors as error bars, the median floor
shaded) and ``OUT/NAME_orders.png`` (the metric of both orders against bits, one panel per model and pruning
ratio, with the dense model and each method alone). Both figures are drawn from the summary alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pih.run_summary import draw_figures, round_floats, summarize

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="JSON documents printed by pih run --format json")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "measured"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for r in args.runs:
        try:
            doc = json.loads(Path(r).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"summarize_runs: {r}: {exc}", file=sys.stderr)
            return 2
        s = summarize(doc)
        name = s["experiment"] or Path(r).stem
        (out / f"{name}.json").write_text(json.dumps(round_floats(s), separators=(",", ":"), allow_nan=True) + "\n")
        drawn = [out / (name + ".json"), *draw_figures(s, out, name)]
        print(f"{name}: " + ", ".join(map(str, drawn)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
