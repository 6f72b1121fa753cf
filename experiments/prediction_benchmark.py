"""The prediction benchmark: every predictor ``pih compare`` runs, on every measured grid, side by side.

    python experiments/prediction_benchmark.py [--runs results/runs] [--out FILE]
    python experiments/prediction_benchmark.py --table [--readme README.md]   # its table, from the committed FILE

Each grid is a ``pih run`` store (both orders over >= 3 calibration seeds) under ``--runs`` named as in GRIDS;
build one with ``pih run experiments/<config>.toml --out <runs>/<name>`` (it resumes from its store, so a grid can be
built over several sittings). Grids whose store is absent are listed as missing, never guessed. Per grid the
command is ``pih compare <store> [--model SOURCE]`` with its default predictors (the simulation's default
assumption sets where the model's layers can be exported, and every store predictor); pooled figures sum the
per-grid counts. Writes the summary the issue asks for and, per grid, each predictor's scores and its failures by
class (one sentence each: which points, and what the predictor cannot see).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # this folder holds experiments/sim (results), which would shadow the package sim

# (name, the store folder, the protocol's model in it (None: the store's only one), config that builds it, model
# source for the simulation's export and the layer-wise predictors (None: from the records; "": from the records,
# no simulation: the layer tensors of convolutional models are not exported), pairing)
GRIDS = (
    ("compare_sparsegpt_gptq", "compare_sparsegpt_gptq", None, "experiments/compare_sparsegpt_gptq.toml", None,
     "SparseGPT x GPTQ"),
    ("compare_wanda_rtn", "compare_wanda_rtn", None, "experiments/compare_wanda_rtn.toml", None, "Wanda x RTN"),
    ("smollm2_wanda_rtn", "smollm2_wanda_rtn", None, "experiments/smollm2_wanda_rtn.toml", "smollm2",
     "Wanda x RTN g64"),
    ("smollm2_sparsegpt_rtn", "smollm2_sparsegpt_rtn", None, "experiments/smollm2_sparsegpt_rtn.toml", "smollm2",
     "SparseGPT x RTN g64"),
    ("resnet_fashion_m0", "resnet_fashion", "tiny-resnet-fashion-mnist-s0", "experiments/resnet_fashion.toml", "",
     "SparseGPT x GPTQ"),
    ("resnet_fashion_m1", "resnet_fashion", "tiny-resnet-fashion-mnist-s1", "experiments/resnet_fashion.toml", "",
     "SparseGPT x GPTQ"),
)


# the README table's columns (predictor, header) and row labels
TABLE_COLUMNS = (("A1", "A1 (simulation)"), ("advise-layers", "advise-layers"), ("loss-layers", "loss-layers"),
                 ("alone-map-layers", "alone-map-layers"), ("fisher-layers", "fisher-layers"),
                 ("prune-first", "prune-first"), ("pih", "PIH"))
ROW_LABELS = {"compare_sparsegpt_gptq": "tiny LLaMA, SparseGPT x GPTQ", "compare_wanda_rtn": "tiny LLaMA, Wanda x RTN",
              "smollm2_wanda_rtn": "SmolLM2, Wanda x RTN g64", "smollm2_sparsegpt_rtn": "SmolLM2, SparseGPT x RTN g64",
              "resnet_fashion_m0": "tiny ResNet, model 0", "resnet_fashion_m1": "tiny ResNet, model 1"}
README_BEGIN, README_END = "<!-- prediction benchmark: begin -->", "<!-- prediction benchmark: end -->"


def _wins(right: int, total: int) -> str:
    if total == 1:
        return ", the win" if right else ""
    return f", {right} of {total} wins" if total else ""


def table(result: dict) -> str:
    """The README's table from a benchmark result: per grid and predictor the signs right above the floor, the
    quantize-first wins called and Spearman ρ; pooled, the counts over the grids the predictor ran on. Bold: the
    row's best (signs, then wins) when one predictor alone has it; "—": the predictor did not run on the grid."""
    cols = [(n, h) for n, h in TABLE_COLUMNS if n in result["predictors"]]
    lines = ["| grid | above floor | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for g in result["grids"]:
        rows = result["per_grid"][g["name"]]
        score = {n: (rows[n]["n_agree"], rows[n]["qfirst_wins_right"]) for n, _ in cols if n in rows}
        top = max(score.values())
        cells = []
        for n, _ in cols:
            if n not in rows:
                cells.append("—")
                continue
            r = rows[n]
            rho = r["spearman_rho"]
            c = f"{r['n_agree']}{_wins(r['qfirst_wins_right'], r['qfirst_wins_total'])}" + (
                f", ρ {rho:+.2f}".replace("-", "−") if rho is not None else "")
            cells.append(f"**{c}**" if score[n] == top and list(score.values()).count(top) == 1 else c)
        lines.append(f"| {ROW_LABELS.get(g['name'], g['name'])} | {g['n_above_floor']} of {g['n_points']} | "
                     + " | ".join(cells) + " |")
    pooled = []
    for n, _ in cols:
        p = result["predictors"][n]
        w = f", {p['qfirst_wins_right']} of {p['qfirst_wins_total']} wins" if p["qfirst_wins_total"] else ""
        pooled.append(f"{p['n_agree']} of {p['n_above_floor']}{w}")
    lines.append(f"| pooled | {sum(g['n_above_floor'] for g in result['grids'])} | " + " | ".join(pooled) + " |")
    return "\n".join([README_BEGIN, *lines, README_END])


def _protocol(store: Path, model_prefix: str | None) -> str | None:
    if model_prefix is None:
        return None
    from pih.records import Store

    hits = {r.protocol for r in Store.existing(store).records() if r.provenance.model.startswith(model_prefix)}
    if len(hits) != 1:
        raise SystemExit(f"{store}: {len(hits)} protocols of a model named {model_prefix}*")
    return hits.pop()


def run_grid(store: Path, model_prefix: str | None, source: str | None, simulated: bool) -> dict:
    from pih.commands.compare import compare

    args = argparse.Namespace(stores=[str(store)], assumptions=None, tensors=None, model=source or None,
                              max_tokens=2048, seed=None, plot=None, no_progress=True, no_simulation=not simulated,
                              protocol=_protocol(store, model_prefix))
    return compare(args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="results/runs", help="folder holding the grids' stores")
    ap.add_argument("--out", default="experiments/measured/prediction_benchmark.json")
    ap.add_argument("--only", nargs="+", default=None, help="grid names to run (default: all present)")
    ap.add_argument("--no-simulation", nargs="+", default=[], metavar="GRID",
                    help="grids scored by the store predictors only (the simulation's export and prediction "
                    "skipped, e.g. for want of time; the grid's entry says so)")
    ap.add_argument("--table", action="store_true", help="print the README table of --out (nothing is run)")
    ap.add_argument("--readme", default=None, metavar="FILE", help="with --table: rewrite the table in FILE")
    a = ap.parse_args(argv)
    if a.table:
        text = table(json.loads(Path(a.out).read_text()))
        if a.readme:
            doc = Path(a.readme).read_text()
            if README_BEGIN not in doc or README_END not in doc:
                raise SystemExit(f"{a.readme}: no {README_BEGIN} ... {README_END} block to rewrite")
            doc = doc[:doc.index(README_BEGIN)] + text + doc[doc.index(README_END) + len(README_END):]
            Path(a.readme).write_text(doc)
        else:
            print(text)
        return 0
    grids, per_grid, missing = [], {}, []
    for name, folder, model_prefix, config, source, pairing in GRIDS:
        store = Path(a.runs) / folder
        if a.only and name not in a.only:
            missing.append({"name": name, "config": config, "why": "not run (--only)"})
            continue
        if not (store / "records.jsonl").is_file():
            missing.append({"name": name, "config": config, "why": f"no store at {store}"})
            continue
        t0 = time.time()
        print(f"prediction benchmark: {name} ...", file=sys.stderr, flush=True)
        simulated = source != "" and name not in a.no_simulation
        out = run_grid(store, model_prefix, source, simulated)
        nf = out["noise_floor"]
        grids.append({"name": name, "model": out["provenance"]["model"], "pairing": pairing, "config": config,
                      "seeds": out["seeds"], "n_points": len(out["measured"]), "n_above_floor": nf["n_above"],
                      "simulation": simulated,
                      "data": out["provenance"].get("data"), "measure_seconds": out["timing"]["measure_seconds"],
                      "seconds": round(time.time() - t0, 1)})
        per_grid[name] = {r["assumption_set"]: {k: r.get(k) for k in (
            "n_points", "n_above_floor", "n_agree", "sign_agreement", "spearman_rho", "spearman_rho_above_floor",
            "qfirst_wins_right", "qfirst_wins_total", "cost_seconds", "cost_ratio", "majority_sign_baseline")}
            | {"failures": [{k: f[k] for k in ("prune", "quant", "A_pred", "A_measured")} for f in r["failures"]],
               "failure_classes": [{k: c[k] for k in ("class", "points", "sentence")} for c in r["failure_classes"]]}
            for r in out["results"]}
    from pih.compare import pool_scores

    predictors, best = pool_scores([([{"assumption_set": n, **r} for n, r in per_grid[g["name"]].items()],
                                     g["measure_seconds"]) for g in grids])
    how = ("python experiments/prediction_benchmark.py --runs RUNS, each grid's store built first with "
           "pih run CONFIG --out RUNS/FOLDER (the grids' configs above); pih compare scores every predictor")
    result = {"how": how, "grids": grids,
              "missing": missing, "predictors": predictors, "best": best, "per_grid": per_grid,
              "targets": {"sign_agreement_above_floor": 0.95, "qfirst_wins_right_fraction": 0.75,
                          "spearman_per_grid": 0.9, "cost_ratio": 1 / 3}}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"prediction benchmark: {len(grids)} grids, {len(missing)} missing; best {best}; wrote {a.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
