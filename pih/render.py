"""Text rendering of the core's results (aligned tables a person reads in a terminal or a Markdown file)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(x, spec: str = ".4g") -> str:
    """A number for a table: '-' for None/NaN, else ``format(x, spec)``."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, (int, float)):
        return format(x, spec)
    return str(x)


def table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None, indent: str = "") -> list[str]:
    """Rows of strings padded to a common width per column; ``align`` one letter per column (l/r, default: r for
    every column but the first)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    n = len(header)
    align = align or ("l" + "r" * (n - 1))
    widths = [max(len(r[i]) for r in cells) for i in range(n)]

    def line(r):
        return indent + "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align,
                                                                                           strict=True)).rstrip()

    out = [line(cells[0]), indent + "  ".join("-" * w for w in widths)]
    return out + [line(r) for r in cells[1:]]


def seed_summary_lines(ss: dict, indent: str = "   ") -> list[str]:
    """The seed-level summary of a grid (``SeedSummary.to_dict()``): points, sign counts, line tests, pooled ρ."""
    out = [f"{indent}seeds {ss['seeds']}: {ss['noise_rule']}"]
    rows = []
    for p in ss["points"]:
        a = p["A_qp"]
        above = "-" if a["above_floor"] is None else ("above" if a["above_floor"] else "below")
        gap = fmt(p["gap"], "+.3f") if p["gap"] is not None else f"cens:{p['censored']}"
        rows.append([p["prune"], p["quant"], gap, fmt(a["mean"], "+.4g"), fmt(a["sd"], ".3g"), fmt(a["floor"], ".3g"),
                     above])
    out += table(["prune", "quant", "C*_P-C_Q", "mean A(Q->P)", "sd", "floor", "vs floor"], rows, "llrrrrl", indent)
    if ss.get("n_above_floor") is not None:
        out.append(f"{indent}{ss['n_above_floor']} of {ss['n_points']} points above their noise floor: quantize "
                   f"first wins at {ss['n_quantize_first_wins_above_floor']}, prune first at "
                   f"{ss['n_prune_first_wins_above_floor']}; {ss['n_censored']} with a censored CER")
    if ss.get("n_exceeding_t20_bound"):
        out.append(f"{indent}{ss['n_exceeding_t20_bound']} points where A(Q->P) exceeds M(P alone) - M(P first) "
                   "beyond the noise: no A1 + disjoint-selectivity model explains them (Theorem T2.0)")
    lines = [ln for ln in ss["lines"] if ln["test"] is not None]
    if lines:
        out.append(f"{indent}monotonicity of mean A(Q->P) in C*_P - C_Q per line (exact permutation test):")
        rows = []
        for ln in lines:
            t = ln["test"]
            fixed = ("fixed " + ln["fixed"]) if ln["along"] == "bits" else ("fixed " + ln["fixed"])
            rows.append([fixed, ln["n_points"], fmt(t["rho"], "+.2f"), fmt(t["p_increasing"], ".3f"),
                         fmt(t["p_decreasing"], ".3f"), t["direction"]])
        out += table(["line", "n", "rho", "p(incr)", "p(decr)", "verdict (alpha 0.05)"], rows, "lrrrrl", indent)
    pooled = ss.get("pooled")
    if pooled:
        lo, hi = pooled["ci"]
        per_seed = ", ".join(f"{k}: {v:+.2f}" for k, v in ss.get("pooled_by_seed", {}).items())
        if pooled["n_clusters"] < 2 or lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            ci = f"no interval: {pooled['n_clusters']} {pooled['cluster']} (a pooled figure needs two or more)"
        else:
            ci = (f"95% CI {fmt(lo, '+.2f')}..{fmt(hi, '+.2f')}, cluster bootstrap over {pooled['n_clusters']} "
                  f"{pooled['cluster']}s")
        out.append(f"{indent}pooled Spearman rho over {pooled['n_points']} point means: {pooled['value']:+.3f} "
                   f"({ci})" + (f"; per seed {per_seed}" if per_seed else ""))
    return out
