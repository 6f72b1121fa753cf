"""pih run --plot: the run's two figures, drawn by the code that draws the committed summaries."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from pih.cli import main  # noqa: E402
from pih.run_summary import draw_figures, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_draw_figures_writes_both(tmp_path):
    doc = json.loads((ROOT / "experiments" / "measured" / "pih_trend.json").read_text())
    drawn = draw_figures(summarize(doc), tmp_path)
    assert [p.name for p in drawn] == ["pih_trend.png", "pih_trend_orders.png"]
    assert all(p.stat().st_size > 10_000 for p in drawn)


def test_plot_folder_checked_before_anything_runs(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    rc = main(["run", str(ROOT / "experiments" / "smoke.toml"), "--out", str(tmp_path / "s"), "--plot", str(f)])
    err = capsys.readouterr().err
    assert rc == 2 and "--plot" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_summary_summarizes_to_itself():
    from pih.run_summary import round_floats, summarize

    doc = json.loads((ROOT / "experiments" / "measured" / "pih_trend.json").read_text())
    again = round_floats(summarize(doc))
    assert {k: v for k, v in again.items() if k != "how"} == {k: v for k, v in doc.items() if k != "how"}
