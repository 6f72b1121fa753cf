"""The simulation's figure data mark the scope of the claim a figure checks: harma.png says, panel by panel,
whether the configuration is inside Harma's scope (one quantization scale per pruning comparison group)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")


def test_harma_figure_flags_each_panel_in_or_out_of_scope(tmp_path):
    from pih import render_plots
    from sim import assumptions as AS
    from sim import presets

    res = presets.PRESETS["harma"](tmp_path, quick=True, seeds=1, assumptions=AS.A1, progress=False)
    data = res.figures["harma.png"]
    assert data["scope"] == "Harma"
    scope_of = {name: inside for name, _, _, inside in presets.HARMA_CONFIGS}
    assert len(data["panels"]) == len(res.summary["configs"]) == len(scope_of)
    for panel, row in zip(data["panels"], res.summary["configs"], strict=True):
        config = panel["title"].split(": ", 1)[1]
        assert panel["in_scope"] is scope_of[config] is row["in_scope"]
    fig = render_plots.panels_figure(data)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [("[inside Harma's scope]" in t, "[outside Harma's scope]" in t) for t in titles] == \
        [(scope_of[t.split(": ", 1)[1].split("\n")[0]], not scope_of[t.split(": ", 1)[1].split("\n")[0]])
         for t in titles]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    lines = {ln["label"] for p in data["panels"] for ln in p["lines"] if ln["x"]}
    assert set(legend) == lines | {"frame: inside Harma's scope", "frame: outside Harma's scope"}
