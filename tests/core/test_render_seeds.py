"""The seed-summary figure (``pih.render_plots``, kind "seeds") draws what it is given: one panel per model, every
point with its noise floor as an error bar, one legend entry per pruning ratio in order."""

from pathlib import Path

import pytest

pytest.importorskip("matplotlib")


def test_seeds_figure_draws_points_with_floors(tmp_path):
    from pih.render_plots import draw, seeds_figure

    pts = [{"x": -1.0 + i, "y": 0.1 * i, "floor": 0.05, "above": i % 2 == 0, "key": r, "label": f"p = {r:g}",
            "bits": b} for i, (r, b) in enumerate([(0.5, 2), (0.2, 3), (0.5, 4), (0.2, 8)])]
    data = {"kind": "seeds", "title": "t", "panels": [{"title": "m0", "points": pts},
                                                      {"title": "m1", "points": pts[:2]}]}
    fig = seeds_figure(data)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["m0", "m1"]
    assert len(axes[0].collections) >= 4  # the points (and their error bars)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["p = 0.2", "p = 0.5"]
    out = draw(data, tmp_path / "s.png")
    assert Path(out).stat().st_size > 1000
