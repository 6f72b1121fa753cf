"""Plots and Markdown reports: the one place that draws (matplotlib, imported only when a figure is drawn).

Everything here takes plain data (dicts, lists of numbers) and writes files; nothing computes a result. The
simulation's presets (:mod:`sim.presets`) return a summary, the data of each figure and what the report says;
:func:`sim_report` writes ``report.md`` and the PNGs. Figure data:

- ``{"kind": "gap" | "lines" | "scatter", "title", "panels": [{"title", "lines": [{"label", "key", "x", "y",
  "bits"}]}], "xlabel"?, "ylabel"?, "columns"?}``: one panel per pairing; every line of every panel shares one
  legend (one colour per ``key`` across panels) and each point is marked with its bit width (``bits``);
- ``{"kind": "snr", "series": [{"label", "style", "bits", "quant", "prune"}]}``: SNR against bits (Kuzmin et al.);
  A panel may say whether it lies inside the scope of the claim the figure checks (``"in_scope": true | false``,
  the claim named by the figure's ``"scope"``): its title says so and its frame is coloured (green inside, red
  outside), with both frames in the legend;
- ``{"kind": "seeds", "title", "panels": [{"title", "points": [{"x", "y", "floor", "above", "key", "label",
  "bits"}], "empty"?}], "xlabel"?, "ylabel"?, "n_seeds"?}``: measured means over seeds with their noise floors as
  error bars (filled: |mean| above the floor; hollow: not), the band |y| <= the median floor shaded, one colour
  per ``key``; a panel without points says ``empty`` instead;
- ``{"kind": "orders", "title", "panels": [{"title", "log_y"?, "lines": [{"label", "key", "x", "y", "err"}],
  "hlines": [{"label", "key", "y", "err"}]}], "xlabel"?, "ylabel"?, "columns"?}``: a metric against bits (both
  orders and a method alone as lines, the dense model and the other method alone as horizontal lines), ``err``
  drawn as error bars (lines) or a band (horizontal lines; None: no spread measured), one legend for the figure.

- ``{"kind": "compare", "title", "bits": [...], "panels": [{"title", "points": [{"x", "y", "bits", "ratio",
  "above"}]}]}``: predicted (x) against measured (y) A(Q→P) of ``pih compare``, one panel per assumption set,
  colour: bit width, marker size: pruning ratio, hollow: measured below its noise floor, symlog axes.

Every multi-panel figure has one legend, below the panels, for every line of every panel (numeric keys in order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

GAP_X, GAP_Y = "C*_P − C_Q", "A(Q→P)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(keys: list, plt) -> dict:
    """One colour per line key, the same in every panel (numeric keys along viridis in their order)."""
    uniq = list(dict.fromkeys(keys))
    if all(isinstance(k, (int, float)) for k in uniq):
        uniq = sorted(uniq)
        cmap = plt.get_cmap("viridis")
        return {k: cmap(i / max(1, len(uniq) - 1)) for i, k in enumerate(uniq)}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {k: cycle[i % len(cycle)] for i, k in enumerate(uniq)}


def _panel_grid(plt, fig_data: dict, default_cols: int, width: float, height: float):
    """The figure and axes of a multi-panel figure: ``columns`` (or ``default_cols``) panels a row."""
    n = max(1, len(fig_data["panels"]))
    cols = min(fig_data.get("columns") or default_cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, axes, rows


SCOPE_COLOURS = {True: "#2b8a3e", False: "#c92a2a"}


def scope_word(inside: bool) -> str:
    return "inside" if inside else "outside"


def _finish_panel(ax, panel: dict, fig_data: dict, zero_lines: bool) -> None:
    """A panel's axes lines at A = 0 and gap = 0 (when asked), its title and axis labels, and (when the panel says
    whether it lies inside the figure's claim's scope) that in the title and the frame's colour."""
    if zero_lines:
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.4, ls=":")
    title = panel["title"]
    inside = panel.get("in_scope")
    if inside is not None:
        title += f"\n[{scope_word(inside)} {fig_data.get('scope', 'the claim')}'s scope]"
        for sp in ax.spines.values():
            sp.set_edgecolor(SCOPE_COLOURS[bool(inside)])
            sp.set_linewidth(2.2)
    ax.set_title(title, fontsize=8, color=SCOPE_COLOURS[bool(inside)] if inside is not None else "k")
    ax.set_xlabel(fig_data.get("xlabel", GAP_X), fontsize=8)
    ax.set_ylabel(fig_data.get("ylabel", GAP_Y), fontsize=8)


def _suptitle(fig, text: str, fontsize: float) -> None:
    """The figure's title, wrapped to the figure's width."""
    import textwrap

    chars = max(40, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def _legend_order(handles: dict) -> list:
    """Legend entries keyed ``(key, label)``: numeric keys in increasing order first, the others as they came."""
    num = sorted((k for k in handles if isinstance(k[0], (int, float))), key=lambda k: (k[0], k[1]))
    return num + [k for k in handles if not isinstance(k[0], (int, float))]


def _figure_legend(fig, handles: dict, fig_data: dict, panels: list) -> None:
    """One legend for the whole figure: every line of every panel (``handles``: (key, label) -> artist), and the
    scope frames when any panel carries ``in_scope``."""
    from matplotlib.patches import Patch

    order = _legend_order(handles)
    arts, labels = [handles[k] for k in order], [k[1] for k in order]
    for inside in (True, False):
        if any(p.get("in_scope") is inside for p in panels):
            arts.append(Patch(facecolor="none", edgecolor=SCOPE_COLOURS[inside], lw=2.2))
            labels.append(f"frame: {scope_word(inside)} {fig_data.get('scope', 'the claim')}'s scope")
    if arts:
        fig.legend(arts, labels, loc="lower center", ncol=min(8, len(arts)), fontsize=7, frameon=False)


def panels_figure(fig_data: dict):
    """Panels of lines (``gap``, ``lines``) or point clouds (``scatter``) with one legend for all of them and the
    bit width written at every point; returns the matplotlib figure."""
    plt = _pyplot()
    kind = fig_data["kind"]
    panels = fig_data["panels"]
    fig, axes, rows = _panel_grid(plt, fig_data, 3, 4.6, 3.6)
    keys = [ln["key"] for p in panels for ln in p["lines"]]
    colours = _colours(keys, plt)
    markers = ("o", "x", "s", "^", "v", "d")
    marker_of = {k: markers[i % len(markers)] for i, k in enumerate(dict.fromkeys(keys))}
    handles: dict = {}
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for ln in panel["lines"]:
            if not ln["x"]:
                continue
            c = colours[ln["key"]]
            if kind == "scatter":
                h = ax.scatter(ln["x"], ln["y"], marker=marker_of[ln["key"]], s=16, color=c)
            else:
                (h,) = ax.plot(ln["x"], ln["y"], "o-", ms=3, color=c)
            handles.setdefault((ln["key"], ln["label"]), h)
            for x, y, b in zip(ln["x"], ln["y"], ln["bits"], strict=True):
                ax.annotate(f"{b}", (x, y), textcoords="offset points", xytext=(2, 2), fontsize=5, color=c)
        _finish_panel(ax, panel, fig_data, kind in ("gap", "scatter"))
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    note = "" if kind == "lines" else " (numbers: bit width of each point)"
    _suptitle(fig, fig_data.get("title", "") + note, 10)
    _figure_legend(fig, handles, fig_data, panels)
    scoped = any(p.get("in_scope") is not None for p in panels)
    fig.tight_layout(rect=(0, 0.9 / (3.6 * rows), 1, 1 - (0.3 if not scoped else 0.15) / (3.6 * rows)))
    return fig


def seeds_figure(fig_data: dict):
    """Means over seeds against the CER gap, each with its noise floor (2 sd over seeds) as an error bar."""
    plt = _pyplot()
    panels = fig_data["panels"]
    fig, axes, rows = _panel_grid(plt, fig_data, 2, 5.6, 4.2)
    colours = _colours([pt["key"] for p in panels for pt in p["points"]], plt)
    handles: dict = {}
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        pts = [pt for pt in panel["points"] if pt["x"] is not None and pt["y"] is not None]
        floors = sorted(pt["floor"] for pt in pts if pt["floor"] is not None)
        if floors:
            med = floors[len(floors) // 2]
            ax.axhspan(-med, med, color="0.88", zorder=0, label=None)
        for pt in pts:
            c = colours[pt["key"]]
            ax.errorbar(pt["x"], pt["y"], yerr=pt["floor"] or 0.0, fmt="none", ecolor=c, elinewidth=0.7, capsize=2)
            h = ax.scatter([pt["x"]], [pt["y"]], s=22, marker="o", edgecolors=[c],
                           facecolors=[c] if pt["above"] else ["white"], linewidths=1.0, zorder=3)
            handles.setdefault((pt["key"], pt["label"]), h)
            ax.annotate(f"{pt['bits']}", (pt["x"], pt["y"]), textcoords="offset points", xytext=(3, 2), fontsize=5,
                        color=c)
        if not pts:
            ax.text(0.5, 0.5, panel.get("empty", "no point to draw"), transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, color="0.35")
        _finish_panel(ax, panel, fig_data, True)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    floors_all = [pt["floor"] for p in panels for pt in p["points"]]
    one_seed = fig_data["n_seeds"] == 1 if "n_seeds" in fig_data else bool(floors_all) and all(
        f is None for f in floors_all)
    _suptitle(fig, fig_data.get("title", "") + (" (numbers: bit width; one seed: no noise floor, no error bars)"
              if one_seed else " (numbers: bit width; bars: noise floor = 2 sd over seeds; filled: above it; "
              "grey band: the median floor)"), 8)
    _figure_legend(fig, handles, fig_data, panels)
    fig.tight_layout(rect=(0, 0.35 / (3.9 * rows), 1, 1 - 0.3 / (3.9 * rows)))
    return fig


def orders_figure(fig_data: dict):
    """A metric against bits per panel: lines with error bars (both orders, a method alone), horizontal lines with
    a band (the dense model, the other method alone), the measured bit widths as ticks, one legend."""
    plt = _pyplot()
    panels = fig_data["panels"]
    fig, axes, rows = _panel_grid(plt, fig_data, 4, 3.9, 3.2)
    styles = {"P->Q": ("#1f77b4", "o", "-"), "Q->P": ("#d62728", "s", "-"), "Q": ("#7f7f7f", "^", "--"),
              "P": ("#9467bd", None, ":"), "dense": ("k", None, "-")}
    keys = [ln["key"] for p in panels for ln in p["lines"] + p.get("hlines", [])]
    extra = _colours([k for k in keys if k not in styles], plt)
    handles: dict = {}
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        ticks: set = set()
        for ln in panel["lines"]:
            if not ln["x"]:
                continue
            c, m, ls = styles.get(ln["key"], (extra.get(ln["key"]), "o", "-"))
            err = [e or 0.0 for e in ln["err"]] if ln.get("err") else None
            h = ax.errorbar(ln["x"], ln["y"], yerr=err, fmt=(m or "o"), ls=ls, ms=3.5, color=c, lw=1.0,
                            elinewidth=0.8, capsize=2.5)
            handles.setdefault((ln["key"], ln["label"]), h)
            ticks.update(ln["x"])
        for hl in panel.get("hlines", []):
            c, _, ls = styles.get(hl["key"], (extra.get(hl["key"]), None, "-"))
            h = ax.axhline(hl["y"], color=c, ls=ls, lw=1.0)
            if hl.get("err"):
                ax.axhspan(hl["y"] - hl["err"], hl["y"] + hl["err"], color=c, alpha=0.12, lw=0)
            handles.setdefault((hl["key"], hl["label"]), h)
        if ticks:
            ax.set_xticks(sorted(ticks))
        if panel.get("log_y"):
            from matplotlib.ticker import ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
        _finish_panel(ax, panel, {"xlabel": "bits", "ylabel": "metric", **fig_data}, False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    _suptitle(fig, fig_data.get("title", ""), 9)
    _figure_legend(fig, handles, fig_data, panels)
    fig.tight_layout(rect=(0, 0.5 / (3.2 * rows), 1, 1 - 0.35 / (3.2 * rows)))
    return fig


def compare_figure(fig_data: dict):
    """Predicted against measured A(Q→P), one panel per assumption set (``pih compare --plot``)."""
    import numpy as np

    plt = _pyplot()
    panels = fig_data["panels"]
    fig, axes, rows = _panel_grid(plt, {"columns": 4, **fig_data}, 4, 3.6, 3.3)
    bits = sorted(fig_data["bits"])
    colours = {b: plt.cm.viridis(i / max(1, len(bits) - 1)) for i, b in enumerate(bits)}
    for ax, panel in zip(axes.flat, panels, strict=False):
        for r in panel["points"]:
            c = colours[r["bits"]]
            ax.scatter(r["x"], r["y"], s=14 + 40 * r["ratio"], marker="o",
                       facecolors=c if r["above"] is not False else "none", edgecolors=c, linewidths=1.0)
        ax.margins(0.12)
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        for axis, key in (("x", "x"), ("y", "y")):  # signs matter, magnitudes span decades
            v = np.abs([r[key] for r in panel["points"]])
            v = v[v > 0]
            if len(v):
                lt = float(np.quantile(v, 0.2))
                (ax.set_xscale if axis == "x" else ax.set_yscale)("symlog", linthresh=lt)
        _finish_panel(ax, panel, {"xlabel": "predicted A(Q->P)", "ylabel": "measured A(Q->P)"}, False)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = {(b, f"{b} bits"): plt.Line2D([], [], ls="", marker="o", color=colours[b]) for b in bits}
    handles[("floor", "below noise floor")] = plt.Line2D([], [], ls="", marker="o", mfc="none", color="k")
    _figure_legend(fig, handles, fig_data, panels)
    _suptitle(fig, fig_data.get("title", ""), 9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    return fig


def snr_figure(fig_data: dict):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for s in fig_data["series"]:
        ax.plot(s["bits"], s["quant"], "o" + s["style"], label=f"quantization, {s['label']}")
        ax.plot(s["bits"], s["prune"], "s" + s["style"], label=f"pruning at 1-b/16, {s['label']}")
    ax.set_xlabel("bits")
    ax.set_ylabel("SNR (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw(fig_data: dict, path: Path) -> Path:
    """Draw one figure from its data (see the module docstring) into the PNG ``path``."""
    make = {"snr": snr_figure, "seeds": seeds_figure, "orders": orders_figure,
            "compare": compare_figure}.get(fig_data["kind"], panels_figure)
    fig = make(fig_data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return Path(path)


# -- the simulation's reports ----------------------------------------------------------------------------------------
def _f(v, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _kuzmin(s: dict, report: dict) -> list[str]:
    lines = ["# Kuzmin et al. baseline (simulation)", "",
             "N(0,1) weights; b-bit signed grid with the MSE-optimal step vs magnitude pruning at 1 − b/16.", "",
             "| bits | sparsity | quant SNR exact | quant SNR MC ± se | prune SNR exact | prune SNR MC ± se "
             "| reference |", "|---|---|---|---|---|---|---|"]
    for e, m in zip(s["rows"], s["monte_carlo"]["rows"], strict=True):
        ref = s["reference"][str(e["bits"])]
        lines.append(f"| {e['bits']} | {e['sparsity']:.2%} | {e['quant_snr_db']:.3f} | {m['quant_snr_db']:.3f} ± "
                     f"{m['quant_se_db']:.3f} | {e['prune_snr_db']:.3f} | {m['prune_snr_db']:.3f} ± "
                     f"{m['prune_se_db']:.3f} | {ref['quant_snr_db']} / {ref['prune_snr_db']} |")
    nu = s["student_t"]["nu"]
    lines += ["", f"Max deviation from the reference table: {s['max_abs_dev_from_reference_db']:.4f} dB; max |MC − "
              f"exact| / se: {s['monte_carlo']['max_abs_z']:.2f}.", "",
              f"## Student-t, nu = {nu:g} (unit variance)", "", "| bits | sparsity | quant SNR | prune SNR |",
              "|---|---|---|---|"]
    lines += [f"| {r['bits']} | {r['sparsity']:.2%} | {r['quant_snr_db']:.3f} | {r['prune_snr_db']:.3f} |"
              for r in s["student_t"]["rows"]]
    return lines + ["", "![SNR](kuzmin.png)"]


def _harma(s: dict, report: dict) -> list[str]:
    lines = ["# Harma et al. check (simulation)", "", s["metric"], "",
             "| tensor | configuration | Harma's scope | max abs excess, P first | Q first worse | Q first better "
             "| points |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dist']} | {r['config']} | {r['in_scope']} | {r['max_abs_excess_prune_first']:.2e} | "
              f"{r['n_quantize_first_strictly_worse']} | {r['n_quantize_first_better']} | {r['n_points']} |"
              for r in s["configs"]]
    return lines + ["", "![A vs CER gap](harma.png)"]


def _t2(s: dict, report: dict) -> list[str]:
    rows = s["pairings"]
    lines = [f"# {report['title']}", "", f"Assumptions: {s.get('assumptions', {}).get('name', '?')}.", ""]
    if "t1_max_residual" in s:
        lines += [f"Theorem 1 max residual: {s['t1_max_residual']:.2e}. Pooled Spearman rho of A(Q->P) in "
                  f"C*_P - C_Q: {s['spearman_rho']:.3f} (95% CI {s['rho_ci'][0]:.3f}..{s['rho_ci'][1]:.3f}),"
                  f" concordant {s['concordant_fraction']:.3f}, n = {s['n_points']}.", ""]
    lines += ["| pairing | rho | 95% CI | concordant | A>0 | A<0 | A=0 | mean A (x<0) | mean A (x>0) | censored "
              "| T1 residual | free zeros (Q first) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pairing']} | {_f(r['spearman_rho'])} | {_f(r['rho_ci'][0])}..{_f(r['rho_ci'][1])} | "
                     f"{_f(r['concordant_fraction'])} | {r['n_A_positive']} | {r['n_A_negative']} | {r['n_A_zero']} | "
                     f"{_f(r.get('mean_A_x_neg'))} | {_f(r.get('mean_A_x_pos'))} | {r['n_censored']} | "
                     f"{r['t1_max_residual']:.1e} | {r['mean_free_zeros_q_first']:.1f} |")
    lines += ["", "PIH predicts rho > 0 with A < 0 for x < 0 and A > 0 for x > 0. x = C*_P - C_Q with C_Q = 16/b; "
              "censored points (C*_P outside the measured curve) are left out of rho. 'T1 residual': A measured "
              "minus Theorem 1 over row units; it is a check only for disjointly selective pairs (row or block "
              "removal with per-row quantizers) and measures how far other pairs are from that decomposition.",
              "", "Pruning alone, mean M over seeds (rotation: the pruner acts on the rotated weights):", "",
              "| pairing | " + " | ".join(f"p={k}" for k in rows[0]["M_P_by_p"]) + " |",
              "|---|" + "---|" * len(rows[0]["M_P_by_p"])]
    lines += [f"| {r['pairing']} | " + " | ".join(f"{v:.4g}" for v in r["M_P_by_p"].values()) + " |" for r in rows]
    return lines + ["", f"![A vs CER gap]({report['png']})"]


def _interference(s: dict, report: dict) -> list[str]:
    lines = ["# Interference (t_P < t_Q)", "", s["delta_definition"], ""]
    for r in s["pairings"]:
        lines += [f"## {r['pairing']}", "", "| p | Delta (mean over b) | spread over b | pruning error | "
                  "Delta_PQ / E_Q (b >= 3) | its relative spread over b |", "|---|---|---|---|---|---|"]
        for k in r["delta_by_p"]:
            lines.append(f"| {k} | {r['delta_by_p'][k]:.3e} | {r['delta_spread_over_bits'][k]:.3e} | "
                         f"{r['prune_error_by_p'][k]:.3e} | {r['delta_over_EQ_by_p'][k]:.3e} | "
                         f"{r['delta_over_EQ_rel_spread_b3plus'][k]:.2f} |")
        lines += ["", f"Max spread over bits / pruning error: {r['spread_over_prune_error_max']:.3g}; max |Delta_QP| "
                  f"{r['delta_q_first_max_abs']:.1e}; additivity residual {r['additivity_max_residual']:.2e}.", ""]
    return lines + ["![Delta](delta.png)", "", "![A](interference.png)"]


def _mixed(s: dict, report: dict) -> list[str]:
    lines = ["# Mixed precision across layers", "", s["definition"], "",
             f"Disjoint layer sets: max |Delta| = {s['delta_disjoint_max_abs']:.2e}, max |A| = "
             f"{s['A_disjoint_max_abs']:.2e}.", "",
             "| high -> low | mean A(progressive) | progressive better | regressive better | n |",
             "|---|---|---|---|---|"]
    return lines + [f"| {k} | {v['mean_A']:.3e} | {v['n_progressive_better']} | {v['n_regressive_better']} | "
                    f"{v['n']} |" for k, v in s["progressive"].items()]


def _multistage(s: dict, report: dict) -> list[str]:
    orders = report["orders"]
    lines = ["# Multi-stage and joint pipelines", "", "Mean M over seeds (higher is better).", "",
             "| pairing | p | b | " + " | ".join(orders) + " | best |", "|---|---|---|" + "---|" * (len(orders) + 1)]
    by: dict = {}
    for r in s["rows"]:
        by.setdefault((r["pairing"], r["ratio"], r["bits"]), []).append(r)
    for (name, p, b), rs in by.items():
        means = {o: sum(r[o] for r in rs) / len(rs) for o in orders if o in rs[0]}
        best = max(means, key=means.get)
        cells = " | ".join(f"{means[o]:.4g}" if o in means else "-" for o in orders)
        lines.append(f"| {name} | {p:g} | {b} | {cells} | {best} |")
    return lines


def _chain(s: dict, report: dict) -> list[str]:
    rows = s["rows"]
    n_out = sum(r["view"] == "output" for r in rows)
    lines = ["# Multi-layer chains: sequential vs dense calibration", "",
             f"Chains of square layers ({', '.join(report['chains'])}); seeds 0..{s['seeds'] - 1}; ratios "
             f"{s['ratios']}, bits {s['bits']}. M = -relative error at the chain output on held-out inputs "
             "('output'), or the layer-wise additive error of the same weights on dense inputs ('layerwise'). "
             "'sequential': each layer calibrated on the outputs of the layers before it as already compressed "
             "(what GPTQ/SparseGPT/Wanda do); 'dense': on the dense chain's inputs.", "",
             f"PIH's pattern (rho > 0, mean A < 0 where C*_P < C_Q and > 0 where C*_P > C_Q) at the output: "
             f"{s['n_pih_pattern_output']} of {n_out} grids.", "",
             "| chain | pairing | calibration | view | rho | 95% CI | A>0 | A<0 | mean A (x<0) | mean A (x>0) | "
             "censored | PIH pattern |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "-" if r["rho_ci"] is None else f"{r['rho_ci'][0]:.2f}..{r['rho_ci'][1]:.2f}"
        lines.append(f"| {r['chain']} | {r['pairing']} | {r['calibration']} | {r['view']} | {_f(r['spearman_rho'])} "
                     f"| {ci} | {r['n_A_positive']} | {r['n_A_negative']} | {_f(r['mean_A_x_neg'])} | "
                     f"{_f(r['mean_A_x_pos'])} | {r['n_censored']} | {'yes' if r['pih_pattern'] else 'no'} |")
    return lines + ["", "![A vs CER gap at the chain output](chain.png)"]


SIM_REPORTS: dict[str, Callable[[dict, dict], list[str]]] = {
    "kuzmin": _kuzmin, "harma": _harma, "disjoint": _t2, "survey": _t2, "interference": _interference,
    "mixed-precision": _mixed, "multistage": _multistage, "chain": _chain}


def sim_report(name: str, summary: dict, figures: dict, report: dict, out: Path) -> Path:
    """Write ``out/report.md`` of simulation preset ``name`` and draw its figures (``figures``: file name ->
    figure data)."""
    out = Path(out)
    for fname, data in figures.items():
        draw(data, out / fname)
    path = out / "report.md"
    path.write_text("\n".join(SIM_REPORTS[name](summary, report)) + "\n")
    return path


# -- pih advise ------------------------------------------------------------------------------------------------
def _loss_bars(ax, x, v, width, color, label) -> None:
    """advice_report's bars of the loss above the best order; a zero (the best order itself) is no bar of zero
    height but a marker on the zero line, labelled with its value."""
    import numpy as np

    v = np.asarray(v, dtype=float)
    zero = np.isclose(v, 0.0, rtol=0.0, atol=1e-12 * max(1.0, float(np.abs(v).max(initial=0.0))))
    ax.bar(x[~zero], v[~zero], width, color=color, label=label)
    ax.plot(x[zero], v[zero] * 0, "D", color=color, ms=7, mec="k", mew=0.6, zorder=3, clip_on=False,
            **({} if (~zero).any() else {"label": label}))
    for xi in x[zero]:
        ax.annotate("0 (best)", (xi, 0), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    for xi, vi in zip(x[~zero], v[~zero], strict=True):
        ax.annotate(f"{vi:.3g}", (xi, vi), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)


def _layer_ticks(ax, names: list[str], d) -> None:
    """advice_report's layer axis: every layer named when they fit (24 at most), else one tick per block (its
    number, thinned to about 16 labels) with the layers that favour the runner-up named on their bars."""
    import numpy as np

    n = len(names)
    if n <= 24:
        ax.set_xticks(np.arange(n), names, rotation=60, ha="right", fontsize=7)
        return
    block = [nm.split(".")[0] for nm in names]
    starts = [i for i in range(n) if i == 0 or block[i] != block[i - 1]]
    step = max(1, math.ceil(len(starts) / 16))
    ax.set_xticks([starts[j] for j in range(0, len(starts), step)], [block[starts[j]] for j in range(0, len(starts),
                  step)], fontsize=7)
    ax.set_xticks(starts, minor=True)
    ax.set_xlabel("block (its measured layers side by side)", fontsize=8)
    top = float(np.abs(d).max(initial=0.0))
    for i, v in enumerate(d):
        if v <= 0:
            ax.annotate(names[i], (i, v), textcoords="offset points", xytext=(0, -3), ha="center", va="top",
                        fontsize=6, rotation=90, color="#c92a2a")
    if top > 0:
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, -0.25 * top), hi)


def advice_report(out: dict, folder) -> Path:
    """``folder/README.md`` (readable in two minutes) and PNGs: every order's predicted (and measured)
    perplexity, the per-layer contributions, the quantization curve with each method's CER."""
    import json

    import numpy as np

    from .render import _f, advice_lines
    from .render import short_label as _short

    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    short = {o["order"]: " ->\n".join(_short(s) for s in o["order"].split(" -> ")) for o in out["orders"]}
    # 1. orders: perplexity above the best order, predicted and (with --verify) measured
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(out["orders"]) + 2), 3.6))
    xs = np.arange(len(out["orders"]))
    have_ppl = all(o["predicted_ppl"] is not None for o in out["orders"])
    pred = np.array([o["predicted_ppl"] if have_ppl else o["layerwise_error"] for o in out["orders"]], dtype=float)
    wdt = 0.38 if "verify" in out else 0.6
    _loss_bars(ax, xs - (wdt / 2 if "verify" in out else 0), pred - pred.min(), wdt, "#8fb3d9",
               "predicted (layer-wise)" if have_ppl else "layer-wise error above the best (predicted)")
    if not have_ppl and "verify" in out:
        ax = ax.twinx()  # measured perplexity on its own axis: the units differ
    if "verify" in out:
        meas = np.array([out["verify"]["ppl"][o["order"]] for o in out["orders"]])
        _loss_bars(ax, xs + wdt / 2, meas - meas.min(), wdt, "#2b5d8a",
                   f"measured ({out['verify']['eval_tokens']} tokens)")
    ax.set_xticks(xs, [short[o["order"]] + (" (*)" if o["predicted_best"] else "") for o in out["orders"]],
                  fontsize=7)
    ax.set_ylabel("perplexity above the best order" if have_ppl or "verify" in out else "layer-wise error above "
                  "the best order")
    ax.set_title("Loss of each order vs the best (*: recommended)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "orders.png", dpi=120)
    plt.close(fig)
    # 2. per-layer contributions
    d = np.asarray(out["layers"]["diff_runner_up_minus_best"])
    names = [n.replace("model.layers.", "").replace("self_attn.", "").replace("mlp.", "")
             for n in out["layers"]["names"]]
    fig, ax = plt.subplots(figsize=(min(14, max(5, 0.28 * len(d) + 2)), 3.6))
    ax.bar(np.arange(len(d)), d, color=["#2b8a3e" if v > 0 else "#c92a2a" for v in d])
    ax.axhline(0, color="k", lw=0.6)
    _layer_ticks(ax, names, d)
    ax.set_ylabel(f"{out['weighting']} error: runner-up - predicted")
    ax.set_title(f"Per layer: green favours {short[out['recommendation']].replace(chr(10), ' ')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "layers.png", dpi=120)
    plt.close(fig)
    figs = ["orders.png", "layers.png"]
    # 3. the quantization curve and the CERs
    if out.get("quant_curve"):
        qc = out["quant_curve"]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ratios = [16 / b for b in qc["bits"]]
        ax.plot(ratios, qc["ppl"], "o-", color="#2b5d8a", label=qc["quantizer"])
        for bb, r, p in zip(qc["bits"], ratios, qc["ppl"], strict=True):
            ax.annotate(f"{bb}b", (r, p), fontsize=7, textcoords="offset points", xytext=(3, 3))
        for r in out["cer"]:
            if not r["is_C_Q"]:
                ax.axhline(r["ppl_alone_few_tokens"], color="#c92a2a", ls=":", lw=0.8)
                x = r["value"] if r["value"] is not None else r["bound"]
                ax.plot([x], [r["ppl_alone_few_tokens"]], "s", color="#c92a2a",
                        label=f"{r['method']} CER {_f(r['value'], '.3g')}" + (
                            f" (censored {r['censored']})" if r["censored"] else ""))
        ax.set_xlabel("C_Q = 16/b")
        ax.set_ylabel(f"perplexity ({out['measurement']['eval_tokens']} tokens)")
        if max(qc["ppl"]) > 3 * min(qc["ppl"]):
            ax.set_yscale("log")
        ax.set_title("Where each method sits on the quantization curve", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(folder / "curve.png", dpi=120)
        plt.close(fig)
        figs.append("curve.png")
    md = [f"# Which order? {', '.join(out['methods'])} on {out['model']}", ""]
    for line in advice_lines(out, md=True):  # one paragraph per line; tables and list items as they are
        if line.startswith("|"):
            md.append(line)
        elif line.startswith("  "):
            md.append("- " + line.strip())
        else:
            if md and md[-1].startswith(("|", "- ")):
                md.append("")
            md += [line, ""] if line else []
    md += ["", "![every order](orders.png)", "", "![per layer](layers.png)", ""]
    if "curve.png" in figs:
        md += ["![quantization curve](curve.png)", ""]
    md += ["## How this was measured", "",
           "Layer-wise: one pass over the calibration windows on the dense model; for each measured linear layer "
           "every order is applied to its dense weight with the bridge's compressors (masks kept by later stages, "
           "SparseGPT's updates snapped back onto an earlier quantizer's grid), scored by tr(dW H dW^T) with the "
           "dense Hessian H. The evaluations place each method alone on the first quantizer's curve (CER, "
           "C_Q = 16/b). `--verify` runs every order with the sequential engine. A(Q->P) = ppl(P first) - "
           "ppl(Q first): positive means quantizing first is better.", "",
           "Provenance: `advise.json` (everything printed above, per-layer errors included) and the records store "
           f"`{out.get('store') or '(none)'}`.", ""]
    (folder / "README.md").write_text("\n".join(md))
    (folder / "advise.json").write_text(json.dumps(out, indent=1, default=str, allow_nan=True))
    return folder
