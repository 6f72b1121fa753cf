"""The figures of the real-weight grids and of the simulation (``pih.render_plots``, built by
``pih.run_summary`` and ``sim.presets``): checked on the figure data and on the matplotlib objects
drawn from it (legend entries, error-bar lengths, frame colours), never on pixels.

- one legend per figure listing every line of every panel, numeric keys in order;
- a panel inside / outside a claim's scope says so in its title and its frame colour;
- the real-weight A(Q→P) figure: one panel per model, error bars = the seed summary's noise floors;
- the real-weight orders figure: one panel per (model, pruning ratio); P first, Q first, Q alone against bits,
  P alone and the dense model as horizontal lines; every value the mean over calibration seeds and every bar the
  noise floor (2 sd over seeds) that ``pih.analysis.seed_summary`` computed from the records independently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from pih import run_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ROOT / "experiments" / "measured"


def _legend_texts(fig) -> list[str]:
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    return [t.get_text() for t in fig.legends[0].get_texts()]


def _line(label, key, xs, bits):
    return {"label": label, "key": key, "x": xs, "y": [0.1 * x for x in xs], "bits": bits}


def test_one_legend_lists_the_lines_of_every_panel_in_key_order():
    """The legend once listed only the first panel's lines: here the second panel alone draws p = 0.8 and the
    first panel's p = 0.1 line is empty."""
    from pih.render_plots import panels_figure

    data = {"kind": "gap", "title": "t", "panels": [
        {"title": "a", "lines": [_line("p=0.2", 0.2, [1.0, 2.0], [2, 4]), _line("p=0.1", 0.1, [], [])]},
        {"title": "b", "lines": [_line("p=0.8", 0.8, [0.5], [3]), _line("p=0.1", 0.1, [0.0, 1.0], [2, 8])]}]}
    fig = panels_figure(data)
    assert _legend_texts(fig) == ["p=0.1", "p=0.2", "p=0.8"]
    texts = sorted(t.get_text() for ax in fig.axes for t in ax.texts)
    assert texts == sorted(["2", "4", "3", "2", "8"])  # every point's bit width, once


def test_scope_is_marked_in_the_title_and_the_frame():
    from pih.render_plots import SCOPE_COLOURS, panels_figure

    data = {"kind": "gap", "title": "t", "scope": "Harma", "panels": [
        {"title": "in", "in_scope": True, "lines": [_line("p=0.5", 0.5, [1.0], [4])]},
        {"title": "out", "in_scope": False, "lines": [_line("p=0.5", 0.5, [2.0], [4])]}]}
    fig = panels_figure(data)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["in\n[inside Harma's scope]", "out\n[outside Harma's scope]"]
    for ax, inside in zip(axes, (True, False), strict=True):
        colours = {sp.get_edgecolor() for sp in ax.spines.values()}
        import matplotlib.colors as mc

        assert colours == {mc.to_rgba(SCOPE_COLOURS[inside])}
    assert _legend_texts(fig) == ["p=0.5", "frame: inside Harma's scope", "frame: outside Harma's scope"]
    # without in_scope nothing is marked
    plain = panels_figure({**data, "panels": [{k: v for k, v in p.items() if k != "in_scope"} for p in
                                              data["panels"]]})
    assert [ax.get_title() for ax in plain.axes if ax.get_title()] == ["in", "out"]
    assert _legend_texts(plain) == ["p=0.5"]


def _committed(name):
    return json.loads((MEASURED / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["pih_trend", "deit_digits"])
def test_gap_figure_is_per_model_with_the_seed_floors_as_error_bars(name):
    from pih.render_plots import seeds_figure

    s = _committed(name)
    fig_data = run_summary.figure(s)
    scale = 100.0 if s["metric"] == "accuracy" else 1.0
    assert len(fig_data["panels"]) == len(s["models"]) == len(s["grids"])
    for panel, g in zip(fig_data["panels"], s["grids"], strict=True):
        assert panel["title"].startswith(g["model"].split("@")[0] + ":")
        want = sorted((p["gap"], p["A_qp"]["mean"] * scale, p["A_qp"]["floor"] * scale)
                      for p in g["seed_summary"]["points"] if p["gap"] is not None)
        got = sorted((p["x"], p["y"], p["floor"]) for p in panel["points"])
        assert [v for t in got for v in t] == pytest.approx([v for t in want for v in t])
    fig = seeds_figure(fig_data)
    ax = [a for a in fig.axes if a.get_title()][0]
    bars = [seg for c in ax.containers for seg in c.lines[2][0].get_segments()]
    lengths = sorted(abs(seg[1][1] - seg[0][1]) / 2 for seg in bars)
    assert lengths == pytest.approx(sorted(p["floor"] for p in fig_data["panels"][0]["points"]))
    band = ax.patches[0]  # the shaded median noise floor: -median..+median
    floors = sorted(p["floor"] for p in fig_data["panels"][0]["points"])
    ys = sorted([band.get_y(), band.get_y() + band.get_height()])
    assert ys == pytest.approx([-floors[len(floors) // 2], floors[len(floors) // 2]])


@pytest.mark.parametrize("name", ["pih_trend", "deit_digits", "rotation_on"])
def test_orders_figure_data_are_the_seed_means_and_floors(name):
    from pih.stats import seed_stat

    s = _committed(name)
    fig = run_summary.orders_figure(s)
    vision = s["metric"] == "accuracy"
    scale, sign = (100.0, 1.0) if vision else (1.0, -1.0)  # LM: M = -perplexity
    panels = {(p["model"], p["ratio"]): p for p in fig["panels"]}
    grid_points = {(g["model"], p["ratio"], p["bits"]): p for g in s["grids"] for p in g["seed_summary"]["points"]}
    assert set(panels) == {(m, r) for m, r, _ in grid_points}
    assert len(panels) == len(fig["panels"])
    for (model, ratio, bits), gp in grid_points.items():
        lines = {ln["key"]: ln for ln in panels[(model, ratio)]["lines"]}
        for key, stat in (("P->Q", gp["m_prune_first"]), ("Q->P", gp["m_quant_first"])):
            i = lines[key]["x"].index(bits)
            assert lines[key]["y"][i] == pytest.approx(sign * stat["mean"] * scale, rel=1e-6)
            assert lines[key]["err"][i] == pytest.approx(stat["floor"] * scale, abs=1e-4)  # 7-digit rounding
    field = "accuracy" if vision else "ppl"
    for (model, ratio), panel in panels.items():
        lines = {ln["key"]: ln for ln in panel["lines"]}
        hl = {h["key"]: h for h in panel["hlines"]}
        q_alone = [p for p in s["points"] if p["model"] == model and p["order"] == "Q"]
        for b, y, e in zip(lines["Q"]["x"], lines["Q"]["y"], lines["Q"]["err"], strict=True):
            st = seed_stat([p[field] for p in q_alone if p["quant"] == b])
            assert (y, e) == pytest.approx((st.mean * scale, st.floor * scale))
        assert sorted(lines["Q"]["x"]) == sorted({p["quant"] for p in q_alone})
        p_alone = seed_stat([p[field] for p in s["points"] if p["model"] == model and p["order"] == "P"
                             and p["prune"] == ratio])
        assert (hl["P"]["y"], hl["P"]["err"]) == pytest.approx((p_alone.mean * scale, p_alone.floor * scale))
        dense = seed_stat([p[field] for p in s["points"] if p["model"] == model and p["order"] == "dense"])
        assert hl["dense"]["y"] == pytest.approx(dense.mean * scale)


def test_orders_figure_draws_one_legend_and_its_error_bars():
    from pih.render_plots import orders_figure

    s = _committed("rotation_on")
    data = run_summary.orders_figure(s)
    fig = orders_figure(data)
    labels = list(dict.fromkeys(ln["label"] for p in data["panels"] for ln in p["lines"] + p["hlines"]))
    assert sorted(_legend_texts(fig)) == sorted(labels)
    assert set(labels) >= {"P first (P→Q)", "Q first (Q→P)", "Q alone", "dense"}
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(axes) == len(data["panels"])
    for ax, panel in zip(axes, data["panels"], strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(b) for b in sorted(panel["lines"][0]["x"])]
        for c, ln in zip(ax.containers, panel["lines"], strict=True):
            half = [abs(seg[1][1] - seg[0][1]) / 2 for seg in c.lines[2][0].get_segments()]
            assert half == pytest.approx(ln["err"])


def test_orders_figure_with_one_seed_has_no_spread():
    s = _committed("rotation_on")
    one = {**s, "seeds": [0], "points": [p for p in s["points"] if p["seed"] == 0]}
    fig = run_summary.orders_figure(one)
    assert "one calibration seed" in fig["title"]
    errs = [e for p in fig["panels"] for ln in p["lines"] for e in ln["err"]] + \
           [h["err"] for p in fig["panels"] for h in p["hlines"]]
    assert errs and all(e is None for e in errs)
    ys = [y for p in fig["panels"] for ln in p["lines"] for y in ln["y"]]
    assert all(math.isfinite(y) for y in ys)


def test_compare_figure_one_panel_per_assumption_set_and_one_legend():
    from pih.render_plots import compare_figure

    pts = [{"x": 0.1 * i - 0.2, "y": 0.2 - 0.1 * i, "bits": b, "ratio": r, "above": i != 1}
           for i, (b, r) in enumerate([(2, 0.5), (4, 0.5), (2, 0.8), (8, 0.2)])]
    data = {"kind": "compare", "title": "t", "bits": [8, 2, 4],
            "panels": [{"title": "A1", "points": pts}, {"title": "A2", "points": pts[:2]}]}
    fig = compare_figure(data)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["A1", "A2"]
    assert _legend_texts(fig) == ["2 bits", "4 bits", "8 bits", "below noise floor"]
    hollow = [len(c.get_facecolors()) == 0 or c.get_facecolors()[0][3] == 0 for c in axes[0].collections]
    assert hollow == [p["above"] is False for p in pts]


def test_gap_figure_of_an_all_censored_store_says_so_and_claims_no_single_seed():
    from pih.render_plots import seeds_figure

    s = _committed("rotation_on")  # three seeds, every CER censored
    data = run_summary.figure(s)
    assert data["n_seeds"] == 3 and all(not p["points"] for p in data["panels"])
    fig = seeds_figure(data)
    assert "one seed" not in fig._suptitle.get_text()
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert notes and all("censored" in t for t in notes)
