"""A real-weight run's compact summary and the data of its two figures, from what ``pih run --format json`` prints.

:func:`summarize` keeps what a reader needs (provenance, seeds, models, per model the grid's seed summary, every
measured point, the pair analysis); :func:`figure` is A(Q→P) against C*_P − C_Q, one panel per model with the
noise floors; :func:`orders_figure` is both orders' metric against bits, one panel per model and pruning ratio,
with the dense model and each method alone. Drawn by :func:`pih.render_plots.draw`; used by
``experiments/summarize_runs.py`` (the committed summaries) and ``pih report`` (this run's smoke grid).
"""

from __future__ import annotations

from pathlib import Path

from .stats import seed_stat


def _scalars(d: dict, drop=()) -> dict:
    return {k: v for k, v in d.items() if k not in drop and (isinstance(v, (int, float, str, bool)) or v is None)}


def round_floats(x):
    """Floats to 7 significant digits (the summary is for reading; the store keeps the full values)."""
    if isinstance(x, float):
        return float(f"{x:.7g}")
    if isinstance(x, dict):
        return {k: round_floats(v) for k, v in x.items()}
    if isinstance(x, list):
        return [round_floats(v) for v in x]
    return x


def _cer_value(c):
    """A run's CER dict, or a summary's value already (so a summary summarizes to itself)."""
    return c.get("value") if isinstance(c, dict) else c


def summarize(doc: dict) -> dict:
    """What ``pih run --format json`` printed (or such a summary again), kept for reading."""
    grids = []
    for g in doc.get("grids") or []:
        mono = {k: v for k, v in (g.get("monotonicity") or {}).items() if k != "violating_pairs"}
        grids.append({"model": g["model"], "protocol": g.get("protocol"), "seed_summary": g.get("seed_summary"),
                      "monotonicity": mono})
    pairs = [{**_scalars(p), "analysis": _scalars(p.get("analysis") or {}, drop=("units",)),
              "cer_P": _cer_value(p.get("cer_P"))} for p in doc.get("pairs") or []]
    units = next((p["analysis"]["units"] for p in doc.get("pairs") or [] if "units" in (p.get("analysis") or {})),
                 doc.get("pair_analysis_units"))
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
            floor = a.get("floor")
            pts.append({"x": p["gap"], "y": a["mean"] * scale, "floor": None if floor is None else floor * scale,
                        "above": bool(a.get("above_floor")), "key": p["ratio"], "label": f"p = {p['ratio']:g}",
                        "bits": p["bits"]})
        pooled = ss.get("pooled") or {}
        ci = pooled.get("ci") or [None, None]
        rho = pooled.get("value")
        floors = (f"{ss['n_above_floor']}/{ss['n_points']} above floor ({ss['n_quantize_first_wins_above_floor']} "
                  "Q-first wins)" if ss.get("n_above_floor") is not None else
                  f"{ss['n_points']} points, one seed: no noise floor")
        title = (f"{g['model'].split('@')[0]}: {floors}\n{ss['n_censored']} censored (not drawn); "
                 + (f"pooled rho {rho:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if rho is not None and None not in ci
                    else "rho not computed"))
        panels.append({"title": title, "points": pts,
                       "empty": f"all {ss['n_points']} points censored: C*_P outside the measured quantization curve"})
    if not panels:
        return None
    unit = "accuracy points" if scale == 100 else "perplexity" if summary.get("metric") == "ppl" else "metric"
    n = len(summary["seeds"] or [])
    return {"kind": "seeds", "title": f"{summary['experiment']}: A(Q→P) over {n} calibration seed{'s' * (n != 1)}, "
            "one panel per model", "n_seeds": n, "panels": panels,
            "ylabel": f"A(Q→P) = M(Q first) − M(P first) ({unit})",
            "xlabel": "C*_P − C_Q (the pruner's CER minus the quantizer's 16/b)"}


def _short(model: str) -> str:
    return model.split("@")[0]


def orders_figure(summary: dict) -> dict | None:
    """Both orders' metric against bits, one panel per (model, pruning ratio): P first and Q first as lines, Q
    alone against bits, P alone and the dense model as horizontal lines; every value the mean over calibration
    seeds with its noise floor (``pih.stats.seed_stat``: 2 sd over seeds, None with one seed) as error bar or
    band. Perplexity for language models, top-1 accuracy in % for the vision models (from ``points``)."""
    pts = summary.get("points") or []
    metric = summary.get("metric")
    field, scale = ("accuracy", 100.0) if metric == "accuracy" else ("ppl", 1.0)
    pts = [p for p in pts if p.get(field) is not None]
    if not any(p["order"] in ("P->Q", "Q->P") for p in pts):
        return None
    models = list(dict.fromkeys(p.get("model") for p in pts))
    by: dict = {}
    for p in pts:
        by.setdefault((p.get("model"), p["order"], p["prune"], p["quant"]), []).append((p.get("seed"), p[field]))

    def stat(model, order, ratio, bits):
        vals = by.get((model, order, ratio, bits))
        if not vals:
            return None
        st = seed_stat([v for _, v in sorted(vals, key=lambda sv: (sv[0] is None, sv[0]))])
        return st.mean * scale, None if st.floor is None else st.floor * scale

    def line(model, order, ratio, bits_all, label):
        xs, ys, errs = [], [], []
        for b in bits_all:
            st = stat(model, order, ratio, b)
            if st is not None:
                xs.append(b)
                ys.append(st[0])
                errs.append(st[1])
        return {"label": label, "key": order, "x": xs, "y": ys, "err": errs, "bits": xs}

    panels = []
    for m in models:
        ratios = sorted({p["prune"] for p in pts if p.get("model") == m and p["order"] in ("P->Q", "Q->P")})
        bits = sorted({p["quant"] for p in pts if p.get("model") == m and p["quant"] is not None})
        dense = stat(m, "dense", None, None)
        for r in ratios:
            lines = [line(m, "P->Q", r, bits, "P first (P→Q)"), line(m, "Q->P", r, bits, "Q first (Q→P)"),
                     line(m, "Q", None, bits, "Q alone")]
            hlines = []
            p_alone = stat(m, "P", r, None)
            if p_alone is not None:
                hlines.append({"label": "P alone (at the panel's ratio)", "key": "P", "y": p_alone[0],
                               "err": p_alone[1]})
            if dense is not None:
                hlines.append({"label": "dense", "key": "dense", "y": dense[0], "err": dense[1]})
            ys = [y for ln in lines for y in ln["y"]] + [h["y"] for h in hlines]
            log_y = field == "ppl" and bool(ys) and min(ys) > 0 and max(ys) > 10 * min(ys)
            panels.append({"title": f"{_short(m) if m else summary.get('experiment')}: p = {r:g}", "lines": lines,
                           "hlines": hlines, "log_y": log_y, "model": m, "ratio": r})
    n_seeds = len(summary.get("seeds") or []) or len({p.get("seed") for p in pts})
    what = ("perplexity (lower is better)" if field == "ppl" else "top-1 accuracy, % (higher is better)")
    spread = (f"bars and bands: noise floor = 2 sd over {n_seeds} calibration seeds" if n_seeds > 1
              else "one calibration seed: no spread measured")
    return {"kind": "orders", "panels": panels, "xlabel": "bits", "ylabel": what,
            "columns": min(4, max(1, len(panels) // max(1, len(models)))),
            "title": f"{summary.get('experiment')}: both orders against bits, one panel per model and pruning ratio "
                     f"(means; {spread})"}


def draw_figures(summary: dict, folder, name: str | None = None) -> list[Path]:
    """Draw a summary's two figures into ``folder`` as NAME.png and NAME_orders.png (NAME: ``name``, else the
    experiment's); returns the paths written (a figure without data is not drawn)."""
    from .render_plots import draw

    name = name or summary.get("experiment") or "run"
    return [draw(fig, Path(folder) / png) for fig, png in ((figure(summary), f"{name}.png"),
                                                        (orders_figure(summary), f"{name}_orders.png"))
            if fig is not None]
