"""Tables of the bridge experiments: reads experiments/measured/<name>.json (the summaries that
experiments/summarize_runs.py writes from what ``pih run CONFIG --format json`` printed) and writes
experiments/measured/README.md: per experiment every pipeline's metric over seeds, and per model the grid's seed
summary (each point's mean A(Q→P), noise floor, verdict, CER gap; the pooled ρ and the decided line tests). The
plots are summarize_runs.py's.

    python experiments/report_bridge.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "measured"


def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _points_table(doc) -> list[str]:
    """Every pipeline's metric per model: mean ± sd over the calibration seeds."""
    import numpy as np

    k = doc.get("metric", "ppl")
    by: dict = {}
    for p in doc["points"]:
        if p.get(k) is None:
            continue
        by.setdefault((p.get("model") or doc["provenance"]["model"], p["order"], p["pipeline"]), []).append(p[k])
    lines = [f"| model | order | pipeline | {k} (mean ± sd over seeds) | n |", "|---|---|---|---|---|"]
    for (m, o, pl), v in by.items():
        sd = f" ± {np.std(v, ddof=1):.4f}" if len(v) > 1 else ""
        lines.append(f"| {m.split('@')[0]} | {o} | {pl} | {np.mean(v):.4f}{sd} | {len(v)} |")
    return lines


def _grid_table(g, scale: float) -> list[str]:
    ss = g.get("seed_summary")
    if not ss or not ss.get("points"):
        return []
    pooled = ss.get("pooled") or {}
    ci = pooled.get("ci") or [None, None]
    out = [f"### {g['model']}: A(Q→P) over seeds {ss['seeds']}", "",
           f"{ss['n_above_floor']} of {ss['n_points']} points above their noise floor "
           f"({ss['n_quantize_first_wins_above_floor']} quantize-first, {ss['n_prune_first_wins_above_floor']} "
           f"prune-first wins), {ss['n_censored']} censored; pooled ρ(A, C*_P − C_Q) = {_f(pooled.get('value'))} "
           f"[{_f(ci[0])}, {_f(ci[1])}] ({pooled.get('cluster')} clusters); {ss['noise_rule']}.", "",
           "| p | bits | A(Q→P) mean | floor | above floor | C*_P − C_Q | censored |", "|---|---|---|---|---|---|---|"]
    for p in ss["points"]:
        a = p["A_qp"]
        out.append(f"| {p['ratio']:g} | {p['bits']} | {_f(a['mean'] * scale, 4)} | {_f((a['floor'] or 0) * scale, 4)} "
                   f"| {'yes' if a['above_floor'] else 'no'} | {_f(p.get('gap'), 2)} | {p.get('censored') or ''} |")
    tests = [ln for ln in ss.get("lines") or [] if ln.get("test") and ln["test"]["direction"] != "not decidable"]
    out += ["", f"Line tests: {len(ss.get('lines') or [])} lines, decided: "
            + (", ".join(f"{ln['fixed']} along {ln['along']}: {ln['test']['direction']} (ρ {ln['test']['rho']:+.2f},"
                         f" p {ln['test']['p_two_sided']:.3f})" for ln in tests) or "none") + ".", ""]
    return out


def main() -> int:
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(HERE.glob("*.json")) if p.stem != "fidelity"}
    # only `pih run` summaries (GPU checks, compare and advise outputs have their own formats and notes)
    docs = {k: d for k, d in docs.items() if isinstance(d, dict) and "provenance" in d and "points" in d}
    out = ["# Bridge results (measured; regenerate with `python experiments/report_bridge.py`)", ""]
    fid = HERE / "fidelity.json"
    if fid.exists():
        out += ["## Fidelity against the reference implementations", "",
                "| method | spec | reference ppl | pih ppl | relative difference |", "|---|---|---|---|---|"]
        for r in json.loads(fid.read_text())["results"]:
            out.append(f"| {r['method']} | {r['spec']} | {r['reference']:.4f} | {r['pih']:.4f} | "
                       f"{100 * r['rel_diff']:+.3f}% |")
        out.append("")
    for name, doc in docs.items():
        prov = doc["provenance"]
        models = ", ".join(f"`{m}`" for m in doc.get("models") or [prov["model"]])
        out += [f"## {name}", "", f"models {models}, data `{prov['data']}`, seqlen {prov['seqlen']}, "
                f"eval tokens {prov['settings'].get('eval_tokens')}, calibration `{prov['calibration']}` × "
                f"{prov['calibration_size']}, calibration seeds {doc.get('seeds')}, settings "
                f"`{json.dumps(prov['settings']['bridge'])}`{', rotated' if prov['settings'].get('rotate') else ''}.",
                ""]
        for n in doc.get("notes", []) + ([doc["note"]] if doc.get("note") else []):
            out += [f"Note: {n}", ""]
        out += _points_table(doc) + [""]
        scale = 100.0 if doc.get("metric") == "accuracy" else 1.0
        for g in doc.get("grids") or []:
            out += _grid_table(g, scale)
        if (HERE / f"{name}.png").exists() and doc.get("grids"):
            out += [f"![{name}]({name}.png) (drawn by experiments/summarize_runs.py)", ""]
    (HERE / "README.md").write_text("\n".join(out) + "\n")
    print(f"wrote {HERE / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
