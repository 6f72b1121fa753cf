"""Measure `pih advise` on the tiny LLaMA: prediction right/wrong against the real engine, and advise's wall time
against trying every order (both measured in the same process, one torch thread).

    PIH_CACHE=... python experiments/advise_measure.py [--seeds 0 1 2] [--out FILE.json]

For every case: advise with the default stratified quarter of the layers and --verify (measured cost ratio), then
advise on every layer (no verify) scored against the same verified perplexities. The raw (unweighted) sum of the
layer errors is scored too, from the stored per-layer errors. Every case runs once per calibration seed (the
model fixed): a case's measured A(Q→P) gets a noise floor (2 sd over the seeds, ``pih.stats``), and a case counts
for a hit rate only where its measured best order is decided (for pairs: |mean A| above the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pih.bridge.advise import AdviseConfig, advise
from pih.commands.advise import parse_prune, parse_quantize

CASES = [
    (["sparsegpt:0.5"], ["gptq:4"]),
    (["sparsegpt:0.5"], ["gptq:3"]),
    (["sparsegpt:0.5"], ["gptq:2"]),
    (["wanda:0.5"], ["rtn:4"]),
    (["wanda:0.4"], ["gptq:2"]),
    (["magnitude:0.6"], ["rtn:3"]),
    (["wanda:2:4"], ["rtn:4:g128"]),
    (["wanda:0.3", "sparsegpt:0.6"], ["gptq:3"]),
]


def _raw_pick(out: dict) -> str:
    errs = {k: float(np.sum(v)) for k, v in out["layers"]["errors"].items()}
    return min(errs, key=errs.get)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="experiments/measured/advise_tiny_llama.json")
    ap.add_argument("--model", default="tiny-llama:kjv")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration seeds")
    ap.add_argument("--model-seed", type=int, default=0, help="the tiny model's training seed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for (prunes, quants), seed in [(c, s) for c in CASES for s in args.seeds]:
        methods = tuple(parse_prune(p) for p in prunes) + tuple(parse_quantize(q) for q in quants)
        t0 = time.time()
        quick = advise(AdviseConfig(model=args.model, methods=methods, seed=seed, model_seed=args.model_seed),
                       verify=True, progress=False)
        full = advise(AdviseConfig(model=args.model, methods=methods, layer_fraction=1.0, seed=seed,
                                   model_seed=args.model_seed), verify=False,
                      progress=False)
        v = quick["verify"]
        real = v["ppl"]
        best = v["best"]
        row = {
            "case": " x ".join(prunes + quants), "seed": seed, "methods": quick["methods"], "verified_ppl": real,
            "best": best, "A_QP_measured": v.get("A_QP_ppl"),
            "quarter": {"pick": quick["recommendation"], "right": quick["recommendation"] == best,
                        "regret": real[quick["recommendation"]] - real[best],
                        "predicted_A_QP": quick.get("predicted_A_QP_ppl"), "confidence": quick["confidence"],
                        "raw_pick_right": _raw_pick(quick) == best,
                        "layers": quick["measurement"]["layers_used"]},
            "all_layers": {"pick": full["recommendation"], "right": full["recommendation"] == best,
                           "regret": real[full["recommendation"]] - real[best],
                           "predicted_A_QP": full.get("predicted_A_QP_ppl"), "confidence": full["confidence"],
                           "raw_pick_right": _raw_pick(full) == best,
                           "layers": full["measurement"]["layers_used"], "advise_s": full["cost"]["advise_s"]},
            "pih": {"pick": quick["pih_order"], "right": quick["verify"].get("pih_right"),
                    "regret": quick["verify"].get("pih_regret_ppl"), "cer": quick["cer"]},
            "cost": {"advise_s": quick["cost"]["advise_s"], "verify_s": quick["cost"]["trying_every_order_s"],
                     "ratio": quick["cost"]["ratio_measured"], "estimated_ratio": quick["cost"]["ratio_estimated"],
                     "setup_s": quick["cost"]["setup_s"]},
            "seconds_total": time.time() - t0,
        }
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("case", "seed", "best", "A_QP_measured")}),
              "quarter", row["quarter"]["right"], "all", row["all_layers"]["right"], "pih", row["pih"]["right"],
              "ratio", round(row["cost"]["ratio"], 2), flush=True)
    from pih.stats import seed_stat

    cases = []
    for prunes, quants in CASES:
        name = " x ".join(prunes + quants)
        rs = [r for r in rows if r["case"] == name]
        a = [r["A_QP_measured"] for r in rs if r["A_QP_measured"] is not None]
        st = seed_stat(a) if len(a) == len(rs) and len(a) >= 2 else None
        # the order that is best on average over the seeds, and whether that is decided (pairs: |mean A| > floor)
        orders = list(rs[0]["verified_ppl"])
        mean_ppl = {o: float(np.mean([r["verified_ppl"][o] for r in rs])) for o in orders}
        best = min(mean_ppl, key=mean_ppl.get)
        decided = bool(st.above) if st is not None else None
        cases.append({"case": name, "seeds": [r["seed"] for r in rs], "A_QP_measured": a,
                      "A_QP_mean": st.mean if st else None, "A_QP_floor": st.floor if st else None,
                      "decided": decided, "best_on_average": best, "mean_ppl": mean_ppl,
                      "quarter_right": [r["quarter"]["pick"] == best for r in rs],
                      "all_layers_right": [r["all_layers"]["pick"] == best for r in rs],
                      "pih_right": [r["pih"]["pick"] == best for r in rs]})
    dec = [c for c in cases if c["decided"]]
    summary = {
        "cases": len(cases), "runs": len(rows), "seeds": args.seeds,
        "cases_decided": len(dec),
        "hit_rate_quarter_decided": float(np.mean([x for c in dec for x in c["quarter_right"]])) if dec else None,
        "hit_rate_all_layers_decided": float(np.mean([x for c in dec for x in c["all_layers_right"]])) if dec
        else None,
        "hit_rate_pih_decided": float(np.mean([x for c in dec for x in c["pih_right"]])) if dec else None,
        "per_case": cases,
        "hit_rate_quarter": float(np.mean([r["quarter"]["right"] for r in rows])),
        "hit_rate_all_layers": float(np.mean([r["all_layers"]["right"] for r in rows])),
        "hit_rate_raw_weighting_all_layers": float(np.mean([r["all_layers"]["raw_pick_right"] for r in rows])),
        "hit_rate_pih": float(np.mean([bool(r["pih"]["right"]) for r in rows])),
        "cost_ratio_median": float(np.median([r["cost"]["ratio"] for r in rows])),
        "cost_ratio_min": float(np.min([r["cost"]["ratio"] for r in rows])),
        "cost_ratio_pairs_median": float(np.median([r["cost"]["ratio"] for r in rows if len(r["methods"]) == 2])),
        "A_QP_measured_vs_predicted_quarter": [(r["A_QP_measured"], r["quarter"]["predicted_A_QP"]) for r in rows
                                               if r["A_QP_measured"] is not None],
        "A_QP_measured_vs_predicted_all_layers": [(r["A_QP_measured"], r["all_layers"]["predicted_A_QP"])
                                                  for r in rows if r["A_QP_measured"] is not None],
    }
    doc = {"what": "pih advise on the tiny LLaMA: predicted order vs every order run with the real engine",
           "how": "advise defaults (a stratified quarter of the linear layers, relative layer errors, 32 "
                  "calibration windows of 128 tokens, 1024 evaluation tokens, curve bits stepped until bracketed) "
                  "with --verify "
                  "(16384 tokens, sequential engine) in one process, one torch thread; 'all_layers' repeats advise "
                  "on every layer against the same verified perplexities. Cost ratio = verify wall time / advise "
                  "wall time (model loading excluded, common to both).",
           "model": args.model, "model_seed": args.model_seed, "provenance": quick["provenance"],
           "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1,
                       "cpus": os.cpu_count()},
           "summary": summary, "rows": rows}
    summary = {k: v for k, v in summary.items() if k != "per_case"}
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
