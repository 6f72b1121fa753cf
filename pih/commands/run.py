"""``pih run CONFIG.toml``: run (or resume) an experiment on a real model through the torch bridge."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run an experiment config on a real model (torch bridge)",
        description="Run a grid of pruning ratios x bit widths (each method alone and both orders) on a real "
        "model, storing each finished point at once; rerunning resumes.")
    p.add_argument("config", help="experiment TOML file (see experiments/)")
    p.add_argument("--out", default=None, help="results store folder (default results/runs/<name>)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json: one JSON document on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="calibration seeds: one run per seed into the same store (overrides the config's seed/seeds)")
    p.add_argument("--model-seeds", type=int, nargs="+", default=None, metavar="S",
                   help="model seeds of the tiny models (overrides model_seed/model_seeds)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="also write each compressed model as a Hugging Face safetensors folder (DIR/<point>/hf), "
                   "in the compressed-tensors format where the scheme fits (DIR/<point>/compressed-tensors), with "
                   "its masks and grids; DIR/index.json lists them")
    p.add_argument("--save-only", action="append", default=None, metavar="POINT",
                   help="with --save: only these points, by order (P, Q, P->Q, Q->P, a [[pipelines]] name) or "
                   "pipeline label (repeatable; default every compressed point)")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="write the run's two figures to DIR: NAME.png (A(Q->P) against C*_P - C_Q, one panel per "
                   "model, noise floors over seeds) and NAME_orders.png (both orders, each method alone and the "
                   "dense model against bits, one panel per model and pruning ratio)")
    from pih.executors import add_executor_args

    add_executor_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pih.bridge.experiment import main_run
    from pih.cli import emit

    if args.save_only and not args.save:
        from pih.errors import PihError

        raise PihError("--save-only needs --save DIR")
    if args.plot:
        from pih.validate import check_output_folder

        check_output_folder("--plot", args.plot)  # before anything is computed
    from pih.executors import executor_from_args

    with executor_from_args(args) as executor:  # checked before the config is read or any model loaded
        out = main_run(args.config, args.out, progress=not args.no_progress, seeds=args.seeds,
                       model_seeds=args.model_seeds, save=args.save, save_select=args.save_only, executor=executor)
    if args.plot:
        from pih.run_summary import draw_figures, summarize

        out["plots"] = [str(p) for p in draw_figures(summarize(out), args.plot)]
        print(f"pih run: figures {', '.join(out['plots'])}", file=sys.stderr)
    emit(args, out, lambda: _table(out))
    if out.get("n_failed"):  # stored and shown, but the run did not measure everything
        from pih.cli import EXIT_FAILED

        print(f"pih run: {out['n_failed']} of {len(out['points'])} points failed ({out['failed'][0]['failed']}): "
              f"stored as failed in {out['store']} and excluded from the analysis", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _table(out: dict) -> None:
    w = sys.stdout.write
    prov = out["provenance"]
    w(f"experiment {out['experiment']}  model {prov['model']}\n")
    w(f"data {prov['data']}  seqlen {prov['seqlen']}  eval tokens {prov['settings'].get('eval_tokens')}  "
      f"calibration {prov['calibration']} x{prov['calibration_size']}  "
      f"seeds {out.get('seeds', [prov['seed']])}\n")
    for n in out.get("notes", []):
        w(f"note: {n}\n")
    for n in out.get("adjustments", []):
        w(f"adjusted: {n}\n")
    from pih.render import table

    k = out.get("metric", "ppl")
    rows = [[r["order"], _fmt(r["prune"]), _fmt(r["quant"]), _fmt(r.get("seed")), _fmt(r[k]),
             _fmt(r.get("sparsity")), r["pipeline"] + ("  FAILED: " + r["failed"] if r.get("failed") else "")]
            for r in out["points"]]
    for line in table(["order", "prune", "quant", "seed", k, "sparsity", "pipeline"], rows, "lrrrrrl"):
        w(line + "\n")
    if out.get("pairs"):
        rows, censored = [], False
        for r in out["pairs"]:
            an = r.get("analysis", {})
            gap = r.get("cer_minus_cq")
            cer = r.get("cer_P") or {}
            if gap is None and cer.get("censored"):
                gap, censored = f"cens:{cer['censored']}", True
            rows.append([_fmt(r["prune"]), _fmt(r["quant"]), _fmt(r.get("seed")), _fmt(r[k + "_P_first"]),
                         _fmt(r[k + "_Q_first"]), _fmt(r["A_QP"]), _fmt(gap), _fmt(an.get("A_PQ_t1")),
                         _fmt(an.get("delta_PQ")), _fmt(an.get("delta_QP"))])
        w("\n")
        for line in table(["prune", "bits", "seed", k + " P first", k + " Q first", "A(Q->P)", "C*_P-C_Q",
                           "T1 A(P->Q)", "dPQ", "dQP"], rows, "r" * 10):
            w(line + "\n")
        w(f"A(Q->P) = M(Q first) - M(P first), M = {'-ppl' if k == 'ppl' else k}: > 0 means quantizing first "
          "is better\n")
        if censored:
            w("cens: the pruner's CER lies outside the quantization curve's measured range (stronger or weaker "
              "than every bit width); never extrapolated\n")
    from pih.render import seed_summary_lines

    for g in out.get("grids", []):
        if g.get("seed_summary") and len(g["seed_summary"]["seeds"]) > 1:
            w(f"\n{g['model']}: A(Q->P) over calibration seeds\n")
            for line in seed_summary_lines(g["seed_summary"]):
                w(line + "\n")
    saved = out.get("saved")
    for run in (saved.get("runs", [saved]) if saved else []):
        w(f"\nsaved {len(run['models'])} compressed model(s) under {run['folder']}:\n")
        for m in run["models"]:
            fm = ", ".join(f for f, ok in m["formats"].items() if ok)
            w(f"  {m['folder']}  ({fm})\n")
    ex = out.get("executor")
    if ex:
        shared = sum(n > 1 for n in ex["stages_computed"].values())
        w(f"\nexecutor {ex['executor']} ({ex['address']}): {ex['groups']} groups on {ex['worker_processes']} worker "
          f"process(es), {ex['model_loads']} model load(s); {len(ex['stages_computed'])} compressed prefixes, "
          f"{shared} of them computed by more than one worker, {sum(ex.get('stages_received', {}).values())} "
          "taken from another worker\n")
    w(f"\nstore: {out['store']}\n")
