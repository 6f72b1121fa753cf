"""Measure `pih advise` on the tiny LLaMA: prediction right/wrong against the real engine, and advise's wall time
against trying every order (both measured in the same process, one torch thread).

    PIH_CACHE=... python experiments/advise_measure.py [--seeds 0 1 2] [--out FILE.json] [--model-seed 1]
        [--model tiny-llama:pydoc --data pydoc]
    python experiments/advise_measure.py --calibrate      # pih/data/advise_calibration.json from the committed files
    python experiments/advise_measure.py --pool FILE...   # advise_pooled.json: advise vs PIH vs prune first

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

from pih.advice import calibration_table, pool_verified, protocol_of

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


# the verified outcomes advise is calibrated against (``--calibrate``), as committed
VERIFIED = ("experiments/measured/advise_tiny_llama.json", "experiments/measured/advise_tiny_llama_model1.json",
            "experiments/measured/advise_tiny_llama_pydoc.json", "experiments/measured/advise_smollm2.json")
CALIBRATION = "pih/data/advise_calibration.json"
# the family (config.model_type) of the models of files written before advise recorded ``model_info``: pih's
# tiny LLaMA is a LlamaForCausalLM, SmolLM2-135M a Llama-architecture GGUF
FAMILY_OF = {"tiny-llama": "llama", "SmolLM2": "llama"}


def _family(model: str, info: dict | None) -> str | None:
    if info and info.get("family"):
        return info["family"]
    return next((f for k, f in FAMILY_OF.items() if model.startswith(k)), None)


def verified_runs(path: str) -> list[dict]:
    """One dict per verified advise run of a committed file (this script's output, or a ``{"full": advise JSON,
    "order_only": ...}`` document of single ``pih advise --verify --format json`` runs): its agreement, tie,
    right/wrong against the verified best, predicted and measured gain, model, size and protocol."""
    doc = json.loads(Path(path).read_text())
    runs = []
    if "rows" in doc:  # this script's: a quarter of the layers (with --verify) and every layer, per row
        prov = doc["provenance"]
        decided = {c["case"]: c["decided"] for c in doc["summary"]["per_case"]}
        for r in doc["rows"]:
            for key in ("quarter", "all_layers"):
                q = r[key]
                n_all = r["all_layers"]["layers"]
                lf = 1.0 if key == "all_layers" else float(prov["settings"]["layer_fraction"])
                pa, ma = q.get("predicted_A_QP"), r.get("A_QP_measured")
                runs.append({
                    "source": path, "case": r["case"], "seed": r["seed"], "model_seed": doc.get("model_seed", 0),
                    "model": prov["model"], "family": _family(prov["model"], r.get("model_info")),
                    "n_linear_layers": n_all, "layer_fraction": lf, "protocol": protocol_of(prov),
                    "agreement": q["confidence"]["layers_agreeing"], "tie": q["confidence"]["level"] == "tie",
                    "right": bool(q["right"]), "decided": decided.get(r["case"]),
                    # pairs: gain = |predicted A|, measured gain of the pick = measured A / sign(predicted A)
                    "predicted_gain": abs(pa) if pa is not None else None,
                    "measured_gain": (ma * np.sign(pa)) if pa is not None and ma is not None else None})
        return runs
    for key in ("full", "order_only"):
        out = doc.get(key)
        if not out or "verify" not in out:
            continue
        prov, v = out["provenance"], out["verify"]
        g = out.get("expected_gain_ppl")
        runs.append({
            "source": f"{path}:{key}", "case": " x ".join(out["methods"]), "seed": prov.get("seed"),
            "model_seed": None, "model": prov["model"], "family": _family(prov["model"], out.get("model_info")),
            "n_linear_layers": out["measurement"]["layers_total"],
            "layer_fraction": float(out["measurement"]["layer_fraction"]), "protocol": protocol_of(prov),
            "agreement": out["confidence"]["layers_agreeing"], "tie": out["confidence"]["level"] == "tie",
            "right": bool(v["prediction_right"]), "decided": None,
            "predicted_gain": g, "measured_gain": (v["ppl"][out["runner_up"]] - v["ppl"][out["recommendation"]])
            if g is not None else None})
    return runs


def calibrate(files=VERIFIED, out=CALIBRATION) -> dict:
    """The calibration table of ``pih advise`` (:func:`pih.advice.calibration_table`) from the committed verified
    outcomes, written with the files and seeds it came from."""
    runs = [r for f in files for r in verified_runs(f)]
    # a case's order-only run repeats the full run's layer-wise measurement: one verified outcome, counted once
    seen, uniq = set(), []
    for r in runs:
        k = (r["model"], r["case"], r["seed"], r["layer_fraction"], r["agreement"], r["right"])
        if k not in seen:
            seen.add(k)
            uniq.append(r)
    cal = calibration_table(uniq)
    cal["source"] = {"script": "python experiments/advise_measure.py --calibrate", "files": [
        {"file": f, "runs": sum(r["source"].split(":")[0] == f for r in uniq),
         "models": sorted({r["model"] for r in uniq if r["source"].split(":")[0] == f}),
         "model_seeds": sorted({r["model_seed"] for r in uniq if r["source"].split(":")[0] == f
                                and r["model_seed"] is not None}),
         "calibration_seeds": sorted({r["seed"] for r in uniq if r["source"].split(":")[0] == f})} for f in files],
        "right": "advise's recommendation is the order with the lowest perplexity measured by --verify in the same "
                 "run (decided: the case's measured best is above the noise floor of its calibration seeds)"}
    cal["runs"] = uniq
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(cal, indent=1, default=float) + "\n")
    return cal


POOLED = "experiments/measured/advise_pooled.json"
def pool(files, out=POOLED) -> dict:
    """:func:`pih.advice.pool_verified` over ``files`` (this script's outputs, one model each), written to ``out``."""
    doc = pool_verified([json.loads(Path(f).read_text()) for f in files])
    doc = {"what": doc["what"], "how": f"python experiments/advise_measure.py --pool {' '.join(files)}",
           "summary": {"files": list(files), **doc["summary"]}, "cases": doc["cases"], "runs": doc["runs"]}
    Path(out).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return doc


def _raw_pick(out: dict) -> str:
    errs = {k: float(np.sum(v)) for k, v in out["layers"]["errors"].items()}
    return min(errs, key=errs.get)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="experiments/measured/advise_tiny_llama.json")
    ap.add_argument("--model", default="tiny-llama:kjv")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration seeds")
    ap.add_argument("--model-seed", type=int, default=0, help="the tiny model's training seed")
    ap.add_argument("--data", default="kjv", help="evaluation and calibration corpus (the tiny model's own)")
    ap.add_argument("--pool", nargs="+", metavar="FILE", default=None, help="pool these files (this script's "
                    f"output) into {POOLED}: hit rate, regret and cost against PIH and prune-first; measure nothing")
    ap.add_argument("--calibrate", action="store_true", help=f"write {CALIBRATION} from the committed verified "
                    "outcomes (" + ", ".join(VERIFIED) + ") and measure nothing")
    args = ap.parse_args()
    if args.pool:
        doc = pool(args.pool)
        print(json.dumps(doc["summary"], indent=1))
        return
    if args.calibrate:
        cal = calibrate()
        for lf, t in cal["tables"].items():
            print(f"layer fraction {lf}: {t['n_runs']} verified runs")
            for b in t["bins"]:
                print(f"  agreement {b['lo']:.3f}-{b['hi']:.3f} (observed {b['observed_lo']:.3f}-"
                      f"{b['observed_hi']:.3f}): right {b['right']}/{b['n']}, Wilson95 "
                      f"{b['wilson95'][0]:.2f}-{b['wilson95'][1]:.2f} -> {b['level']}")
            print("  ties:", t["tie"], "\n  gain ratio:", t["gain_ratio"])
        return
    import torch

    from pih.bridge.advise import AdviseConfig, advise
    from pih.commands.advise import parse_prune, parse_quantize

    torch.set_num_threads(1)
    rows = []
    for (prunes, quants), seed in [(c, s) for c in CASES for s in args.seeds]:
        methods = tuple(parse_prune(p) for p in prunes) + tuple(parse_quantize(q) for q in quants)
        t0 = time.time()
        data = {"eval": args.data, "calibration": args.data}
        quick = advise(AdviseConfig(model=args.model, methods=methods, seed=seed, model_seed=args.model_seed,
                                    **data), verify=True, progress=False)
        full = advise(AdviseConfig(model=args.model, methods=methods, layer_fraction=1.0, seed=seed,
                                   model_seed=args.model_seed, **data), verify=False,
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
            "prune_first": {"pick": v.get("prune_first"), "right": v.get("prune_first_right"),
                            "regret": v.get("prune_first_regret_ppl")},
            "dense_ppl": v.get("dense_ppl"),
            "cost": {"advise_s": quick["cost"]["advise_s"], "verify_s": quick["cost"]["trying_every_order_s"],
                     "ratio": quick["cost"]["ratio_measured"], "estimated_ratio": quick["cost"]["ratio_estimated"],
                     "setup_s": quick["cost"]["setup_s"]},
            "seconds_total": time.time() - t0, "model_info": quick.get("model_info"),
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
                      "pih_right": [r["pih"]["pick"] == best for r in rs],
                      "prune_first_right": [r["prune_first"]["pick"] == best for r in rs]})
    dec = [c for c in cases if c["decided"]]
    summary = {
        "cases": len(cases), "runs": len(rows), "seeds": args.seeds,
        "cases_decided": len(dec),
        "hit_rate_quarter_decided": float(np.mean([x for c in dec for x in c["quarter_right"]])) if dec else None,
        "hit_rate_all_layers_decided": float(np.mean([x for c in dec for x in c["all_layers_right"]])) if dec
        else None,
        "hit_rate_pih_decided": float(np.mean([x for c in dec for x in c["pih_right"]])) if dec else None,
        "hit_rate_prune_first_decided": float(np.mean([x for c in dec for x in c["prune_first_right"]])) if dec
        else None,
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
