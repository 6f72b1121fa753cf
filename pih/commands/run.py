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
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pih.bridge.experiment import main_run
    from pih.cli import emit

    out = main_run(args.config, args.out, progress=not args.no_progress)
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
      f"calibration {prov['calibration']} x{prov['calibration_size']}  seed {prov['seed']}\n")
    for n in out.get("notes", []):
        w(f"note: {n}\n")
    for n in out.get("adjustments", []):
        w(f"adjusted: {n}\n")
    k = out.get("metric", "ppl")
    w(f"{'order':<10}{'prune':>8}{'quant':>7}{k:>12}{'sparsity':>10}  pipeline\n")
    for r in out["points"]:
        w(f"{r['order']:<10}{_fmt(r['prune']):>8}{_fmt(r['quant']):>7}{_fmt(r[k]):>12}"
          f"{_fmt(r.get('sparsity')):>10}  {r['pipeline']}{'  FAILED: ' + r['failed'] if r.get('failed') else ''}\n")
    if out.get("pairs"):
        w(f"\n{'prune':>6}{'bits':>6}{k + ' P first':>13}{k + ' Q first':>13}{'A(Q->P)':>11}{'CER_P-C_Q':>11}"
          f"{'T1 A(P->Q)':>12}{'dPQ':>10}{'dQP':>10}\n")
        for r in out["pairs"]:
            an = r.get("analysis", {})
            w(f"{_fmt(r['prune']):>6}{_fmt(r['quant']):>6}{_fmt(r[k + '_P_first']):>13}{_fmt(r[k + '_Q_first']):>13}"
              f"{_fmt(r['A_QP']):>11}{_fmt(r.get('cer_minus_cq')):>11}{_fmt(an.get('A_PQ_t1')):>12}"
              f"{_fmt(an.get('delta_PQ')):>10}{_fmt(an.get('delta_QP')):>10}\n")
    w(f"\nstore: {out['store']}\n")
