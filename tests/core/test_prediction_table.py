"""The README's prediction table is the committed benchmark's, drawn by experiments/prediction_benchmark.py."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "experiments" / "measured" / "prediction_benchmark.json"


def _bench():
    spec = importlib.util.spec_from_file_location("prediction_benchmark", ROOT / "experiments" /
                                                  "prediction_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = path  # the script drops its own folder from sys.path when run from it
    return mod


def test_readme_prediction_table_is_the_committed_benchmark():
    mod = _bench()
    text = (ROOT / "README.md").read_text()
    block = text[text.index(mod.README_BEGIN):text.index(mod.README_END) + len(mod.README_END)]
    assert block == mod.table(json.loads(RESULT.read_text()))


def test_table_cells_follow_the_counts():
    """A cell is the signs right above the floor, the wins called (", the win" for a grid's only one) and ρ; the
    row's best alone is bold; a predictor that did not run on a grid is a dash; the pooled row sums the grids."""
    mod = _bench()
    res = json.loads(RESULT.read_text())
    g0 = res["grids"][0]["name"]
    row = res["per_grid"][g0]
    for n in row:
        row[n] |= {"n_agree": 1, "qfirst_wins_right": 0, "qfirst_wins_total": 1, "spearman_rho": None}
    row["advise-layers"] |= {"n_agree": 3, "qfirst_wins_right": 1, "spearman_rho": -0.5}
    row.pop("fisher-layers")
    lines = mod.table(res).split("\n")
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    cols = [h for n, h in mod.TABLE_COLUMNS if n in res["predictors"]]
    by = dict(zip(["grid", "above", *cols], cells, strict=True))
    assert by["advise-layers"] == "**3, the win, ρ −0.50**" and by["prune-first"] == "1"
    assert by["fisher-layers"] == "—"
    row["prune-first"] |= {"n_agree": 3, "qfirst_wins_right": 1}  # a tie for the best: nothing bold
    assert "**" not in mod.table(res).split("\n")[3]
    p = res["predictors"]["prune-first"]
    assert lines[-2].split("|")[cols.index("prune-first") + 3].strip().startswith(
        f"{p['n_agree']} of {p['n_above_floor']}")
