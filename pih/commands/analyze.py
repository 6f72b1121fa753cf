"""``pih analyze``: G, CER and A(Q->P) for every grid in a results store, by the same function for any backend."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ..cli import add_format, add_ratio_base, emit, ratio_from_args
from ..validate import check_int


def register(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="G, CER and A(Q->P) of the grids in a results store (simulation or real weights)",
        description="Read a results store (written by pih simulate, pih run or pih report), split it by "
        "protocol, and for each protocol compute, per pruning x quantization point and seed: each method alone, "
        "both orders, the CER of the pruner on the quantizer's own curve (C_Q = BASE/b), A(Q->P), and the "
        "monotonicity of A(Q->P) in C*_P - C_Q. Records of different protocols are never mixed.",
    )
    p.add_argument("store", help="results store folder (holds records.jsonl), or a folder holding one as store/ "
                   "(what pih report, pih simulate and pih advise --report write)")
    add_ratio_base(p)
    p.add_argument("--isotonic", action="store_true", help="fit the quantization curve isotonically first")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the rho interval")
    p.add_argument("--rows", action="store_true", help="print every grid row in the table")
    add_format(p)
    p.set_defaults(func=run)


def find_store(path: str, command: str, name: str = "store") -> Path:
    """The store folder ``path`` names: itself when it holds records.jsonl, else its ``store/`` subfolder (the
    layout pih report, pih simulate and pih advise --report write; the choice is said on stderr). Neither: a
    one-line error that names the stores one level further down, if any."""
    import sys

    from ..errors import bad

    p = Path(path)
    if (p / "records.jsonl").is_file():
        return p
    if (p / "store" / "records.jsonl").is_file():
        print(f"{command}: {p} holds no records.jsonl; using the store {p / 'store'}", file=sys.stderr)
        return p / "store"
    if not p.is_dir():
        raise bad(name, str(p), "no such folder")
    below = sorted(str(q.parent) for q in [*p.glob("*/records.jsonl"), *p.glob("*/store/records.jsonl")])
    hint = f"; stores below it: {', '.join(below[:4])}{', ...' if len(below) > 4 else ''}" if below else ""
    raise bad(name, str(p), f"no records.jsonl there, nor in {p / 'store'}{hint}")


def run(args) -> int:
    from ..analysis import analyze_grid
    from ..records import Store

    ratio = ratio_from_args(args)
    n_boot = check_int("--boot", args.boot, 1, why="needs at least 1 bootstrap resample (the rho interval)")
    path = find_store(args.store, "pih analyze")
    store = Store.existing(path)
    groups = defaultdict(list)
    for r in store.records():
        groups[r.protocol].append(r)
    results, failed = [], []
    for recs in groups.values():
        prov = recs[0].provenance
        res = analyze_grid(recs, ratio=ratio, isotonic=args.isotonic, n_boot=n_boot)
        failed += res.failed
        if not res.rows:
            continue
        d = res.to_dict()
        d["provenance"] = {k: v for k, v in prov.to_dict().items() if k not in ("seed", "versions")}
        d["seeds"] = sorted({r.provenance.seed for r in recs})
        results.append(d)
    payload = {"store": str(path), "convention": f"C_Q(b) = {args.base:g}/b", "grids": results,
               "n_failed": len(failed), "failed": failed}

    def human() -> None:
        if failed:
            shown = ", ".join(f"{f['order']} seed {f['seed']}" for f in failed[:4])
            print(f"{path}: {len(failed)} failed record(s) excluded from the analysis ({failed[0]['reason']}): "
                  f"{shown}{', ...' if len(failed) > 4 else ''} (pih records lists them)")
        if not results:
            print(f"{path}: no pruning x quantization grid (need each method alone and both orders)")
        for d in results:
            prov = d["provenance"]
            print(f"== {prov['backend']}/{prov['model']} data={prov['data']} metric={prov['metric']} "
                  f"protocol={d['protocol']} seeds={d['seeds']}")
            m = d["monotonicity"]
            rows = d["rows"]
            pruners = sorted({r["prune"].rsplit(",", 1)[0] + "]" for r in rows})
            quants = sorted({"Q[*b," + r["quant"].split(",", 1)[1] for r in rows})
            print(f"   {' '.join(pruners)} x {' '.join(quants)}")
            n_pos = sum(r["A_qp"] > 0 for r in rows)
            n_neg = sum(r["A_qp"] < 0 for r in rows)
            print(f"   {len(rows)} points, {d['n_censored']} with a censored CER; A(Q->P) > 0 at {n_pos}, < 0 at "
                  f"{n_neg}, = 0 at {len(rows) - n_pos - n_neg}")
            if d.get("n_failed"):
                print(f"   {d['n_failed']} failed record(s) of this grid excluded")
            if m:
                lo, hi = m["rho_ci"]
                ci = (f"95% CI {lo:+.3f}..{hi:+.3f}, resampling whole {m['ci_resamples']}s"
                      if math.isfinite(lo) and math.isfinite(hi) else
                      "no bootstrap interval: every resample was degenerate")
                print(f"   Spearman rho of A(Q->P) in C*_P - C_Q over all rows: {m['spearman_rho']:+.3f} "
                      f"({ci}), concordant pairs {m['concordant_fraction']:.3f}, n = {m['n_points']}")
            ss = d.get("seed_summary")
            if ss:
                from ..render import seed_summary_lines

                for line in seed_summary_lines(ss):
                    print(line)
            if args.rows:
                from ..render import fmt, table

                cells = []
                for r in rows:
                    cer = "cens:" + r["cer_censored"] if r["cer_prune"] is None else f"{r['cer_prune']:.3f}"
                    cells.append([r["prune"], r["quant"], r["seed"], cer, f"{r['c_quant']:.2f}",
                                  fmt(r["gap"], "+.3f"), fmt(r["A_qp"], "+.4g")])
                for line in table(["prune", "quant", "seed", "C*_P", "C_Q", "C*_P-C_Q", "A(Q->P)"], cells,
                                  "llrrrrr", "   "):
                    print(line)
                if any(r["cer_prune"] is None for r in rows):
                    print("   cens: the pruner's CER lies outside the quantization curve's measured range "
                          "(stronger or weaker than every bit width); never extrapolated")

    emit(args, payload, human)
    return 0
