"""Compact, committed summaries of real-weight grids measured over seeds, and their plots.

    python experiments/summarize_runs.py RUN.json [RUN.json ...] [--out experiments/measured]

Each RUN.json is what ``pih run experiments/NAME.toml --format json`` printed (the experiment's store holds every
record; this keeps what a reader needs): the provenance, the seeds and models, per model the seed summary of the
grid (each point's A(Q→P) over calibration seeds with its mean, sd and noise floor, the per-line tests, the pooled
ρ with its cluster CI, the Theorem 2.0 bound), the monotonicity statistics, every measured point and the pair
analysis of every (model, seed, p, b) (owner errors, T1, interference). Writes ``OUT/NAME.json`` and
``OUT/NAME.png`` (A(Q→P) against C*_P − C_Q, one panel per model, noise floors as error bars).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pih.render_plots import draw

ROOT = Path(__file__).resolve().parents[1]


def _scalars(d: dict, drop=()) -> dict:
    return {k: v for k, v in d.items() if k not in drop and (isinstance(v, (int, float, str, bool)) or v is None)}


def _round(x):
    """Floats to 7 significant digits (the summary is for reading; the store keeps the full values)."""
    if isinstance(x, float):
        return float(f"{x:.7g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def summarize(doc: dict) -> dict:
    grids = []
    for g in doc.get("grids") or []:
        mono = {k: v for k, v in (g.get("monotonicity") or {}).items() if k != "violating_pairs"}
        grids.append({"model": g["model"], "protocol": g.get("protocol"), "seed_summary": g.get("seed_summary"),
                      "monotonicity": mono})
    pairs = [{**_scalars(p), "analysis": _scalars(p.get("analysis") or {}, drop=("units",)),
              "cer_P": (p.get("cer_P") or {}).get("value")} for p in doc.get("pairs") or []]
    units = next((p["analysis"]["units"] for p in doc.get("pairs") or [] if "units" in (p.get("analysis") or {})),
                 None)
    return {"experiment": doc.get("experiment"), "metric": doc.get("metric"), "seeds": doc.get("seeds"),
            "models": doc.get("models"), "provenance": doc.get("provenance"), "n_failed": doc.get("n_failed"),
            "failed": doc.get("failed"), "adjustments": doc.get("adjustments"), "notes": doc.get("notes"),
            "n_censored": doc.get("n_censored"), "quant_curve": doc.get("quant_curve"), "grids": grids,
            "points": doc.get("points"), "pair_analysis_units": units, "pairs": pairs,
            "how": f"python experiments/summarize_runs.py on the output of pih run experiments/{doc.get('experiment')}"
                   ".toml --format json (code: pih at this commit; the store holds every record)"}


def figure(summary: dict) -> dict | None:
    panels = []
    scale = 100.0 if summary.get("metric") == "accuracy" else 1.0  # accuracy in points
    for g in summary["grids"]:
        ss = g.get("seed_summary")
        if not ss or not ss.get("points"):
            continue
        pts = []
        for p in ss["points"]:
            a = p["A_qp"]
            if p.get("gap") is None or a.get("mean") is None:
                continue
            pts.append({"x": p["gap"], "y": a["mean"] * scale, "floor": (a.get("floor") or 0.0) * scale,
                        "above": bool(a.get("above_floor")), "key": p["ratio"], "label": f"p = {p['ratio']:g}",
                        "bits": p["bits"]})
        pooled = ss.get("pooled") or {}
        ci = pooled.get("ci") or [None, None]
        rho = pooled.get("value")
        title = (f"{g['model'].split('@')[0]}: {ss['n_above_floor']}/{ss['n_points']} above floor "
                 f"({ss['n_quantize_first_wins_above_floor']} Q-first wins)\n{ss['n_censored']} censored (not "
                 "drawn); "
                 + (f"pooled rho {rho:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if rho is not None and None not in ci
                    else "rho not computed"))
        panels.append({"title": title, "points": pts})
    if not panels:
        return None
    unit = "accuracy points" if scale == 100 else "perplexity" if summary.get("metric") == "ppl" else "metric"
    return {"kind": "seeds", "title": f"{summary['experiment']}: A(Q→P) over {len(summary['seeds'] or [])} "
            "calibration seeds", "panels": panels, "ylabel": f"A(Q→P) = M(Q first) − M(P first) ({unit})",
            "xlabel": "C*_P − C_Q (the pruner's CER minus the quantizer's 16/b)"}


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
        (out / f"{name}.json").write_text(json.dumps(_round(s), separators=(",", ":"), allow_nan=True) + "\n")
        fig = figure(s)
        if fig is not None:
            draw(fig, out / f"{name}.png")
        print(f"{name}: {out / (name + '.json')}" + (f", {out / (name + '.png')}" if fig else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
