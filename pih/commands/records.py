"""``pih records``: list what a results store holds (and, with ``--check``, verify every line and sidecar)."""

from __future__ import annotations

import math
from pathlib import Path

from ..cli import add_format, emit
from ..records import Record, Store
from ..validate import check_int


def register(sub) -> None:
    p = sub.add_parser("records", help="list the records of a results store",
                       description="List the records of a results store folder (records.jsonl). Failed "
                       "measurements (a non-finite metric) are listed as FAILED with their reason.")
    p.add_argument("store", help="store folder")
    p.add_argument("--limit", type=int, default=50, help="rows to print in the table (default 50; 0: none)")
    p.add_argument("--check", action="store_true",
                   help="also verify every sidecar array file and list leftovers; exit 2 when anything is wrong")
    add_format(p)
    p.set_defaults(func=run)


def _value(d: dict) -> str:
    v = d["value"]
    shown = f"{v:.6g}" if isinstance(v, (int, float)) and math.isfinite(v) else str(v)
    return f"{shown} FAILED ({d['failed']})" if d.get("failed") else shown


def run(args) -> int:
    limit = check_int("--limit", args.limit, 0)
    path = Path(args.store)
    store = Store.existing(path)
    raw = store.raw()
    records = [Record.from_dict(d) for d in raw]
    protocols = sorted({r.protocol for r in records})
    failed = [r.key for r in records if not r.ok]
    payload = {"store": str(path), "n_records": len(raw), "protocols": protocols, "records": raw,
               "n_failed": len(failed), "duplicates": store.duplicates}
    problems = store.verify() if args.check else []
    if args.check:
        payload["problems"] = problems
    for d, r in zip(raw, records, strict=True):  # an older store's -1e300 placeholder is shown as what it was
        if r.failed and not d.get("failed"):
            d["failed"] = r.failed

    def human() -> None:
        extra = f", {len(failed)} failed" if failed else ""
        print(f"{len(raw)} records{extra}, {len(protocols)} protocol(s) in {path}")
        for d in raw[:limit]:
            prov = d["provenance"]
            print(f"{d['key']}  {prov['backend']}/{prov['model']}  seed={prov['seed']}  {d['order']:<50}"
                  f"  {prov['metric']}={_value(d)}  {d.get('point', {})}")
        if len(raw) > limit:
            print(f"... {len(raw) - limit} more (--limit)")
        if args.check:
            print("check: " + ("no problem found" if not problems else f"{len(problems)} problem(s):"))
            for p in problems:
                print(f"  {p}")

    emit(args, payload, human)
    return 2 if problems else 0
