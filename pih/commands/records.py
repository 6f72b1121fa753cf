"""``pih records``: list what a results store holds."""

from __future__ import annotations

from pathlib import Path

from ..cli import add_format, emit
from ..records import Record, Store


def register(sub) -> None:
    p = sub.add_parser("records", help="list the records of a results store",
                       description="List the records of a results store folder (records.jsonl).")
    p.add_argument("store", help="store folder")
    p.add_argument("--limit", type=int, default=50, help="rows to print in the table (default 50)")
    add_format(p)
    p.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.store)
    raw = Store.existing(path).raw()
    protocols = sorted({Record.from_dict(d).protocol for d in raw})
    payload = {"store": str(path), "n_records": len(raw), "protocols": protocols, "records": raw}

    def human() -> None:
        print(f"{len(raw)} records, {len(protocols)} protocol(s) in {path}")
        for d in raw[: args.limit]:
            prov = d["provenance"]
            print(f"{d['key']}  {prov['backend']}/{prov['model']}  seed={prov['seed']}  {d['order']:<50}"
                  f"  {prov['metric']}={d['value']:.6g}  {d.get('point', {})}")
        if len(raw) > args.limit:
            print(f"... {len(raw) - args.limit} more (--limit)")

    emit(args, payload, human)
    return 0
