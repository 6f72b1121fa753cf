"""``pih records``: list what a results store holds (and, with ``--check``, verify every line and sidecar)."""

from __future__ import annotations

import math

from ..cli import add_format, emit
from ..records import Record, Store
from ..validate import check_int


def register(sub) -> None:
    p = sub.add_parser("records", help="list the records of a results store",
                       description="List the records of a results store folder (records.jsonl). Failed "
                       "measurements (a non-finite metric) are listed as FAILED with their reason.")
    p.add_argument("store", help="store folder (holds records.jsonl), or a folder holding one as store/")
    p.add_argument("--limit", type=int, default=50, help="rows to print in the table (default 50; 0: none)")
    p.add_argument("--check", action="store_true",
                   help="also verify every sidecar array file and list leftovers; exit 2 when anything is wrong")
    add_format(p)
    p.set_defaults(func=run)


def _value(d: dict) -> str:
    v = d["value"]
    shown = f"{v:.6g}" if isinstance(v, (int, float)) and math.isfinite(v) else str(v)
    return f"{shown} FAILED ({d['failed']})" if d.get("failed") else shown


def _flat(d, prefix: str = "") -> list[str]:
    """A record's point (nested settings included) as key=value words; nothing for an empty one."""
    if not isinstance(d, dict):
        return [f"{prefix}={d}"] if prefix else [str(d)]
    out = []
    for k, v in d.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out += _flat(v, name) if v else []
        elif isinstance(v, (list, tuple)):
            out.append(f"{name}={','.join(map(str, v))}")
        elif isinstance(v, float):
            out.append(f"{name}={v:g}")
        else:
            out.append(f"{name}={v}")
    return out


def table_lines(raw: list[dict]) -> list[str]:
    """Stored records (their JSON lines) as an aligned table; what every row shares (model, metric) is said once
    above it instead of in a column."""
    from ..render import table

    if not raw:
        return []
    models = {f"{d['provenance']['backend']}/{d['provenance']['model']}" for d in raw}
    metrics = {d["provenance"]["metric"] for d in raw}
    L = []
    shared = ([f"model {models.pop()}"] if len(models) == 1 else []) + (
        [f"metric {next(iter(metrics))}"] if len(metrics) == 1 else [])
    if shared:
        L.append("all rows: " + ", ".join(shared))
    points = [" ".join(_flat(d.get("point") or {})) for d in raw]
    has_point = any(points)  # no column of blanks
    header = ["key"] + (["model"] if len(models) > 1 else []) + ["seed", "order"] + (
        ["metric"] if len(metrics) > 1 else []) + ["value"] + (["point"] if has_point else [])
    rows = []
    for d, point in zip(raw, points, strict=True):
        prov = d["provenance"]
        rows.append([d["key"]] + ([f"{prov['backend']}/{prov['model']}"] if len(models) > 1 else [])
                    + [prov["seed"], d["order"]] + ([prov["metric"]] if len(metrics) > 1 else [])
                    + [_value(d)] + ([point] if has_point else []))
    align = ("l" + ("l" if len(models) > 1 else "") + "rl" + ("l" if len(metrics) > 1 else "") + "r"
             + ("l" if has_point else ""))
    return L + table(header, rows, align)


def run(args) -> int:
    from .analyze import find_store

    limit = check_int("--limit", args.limit, 0)
    path = find_store(args.store, "pih records")
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
        for line in table_lines(raw[:limit]):
            print(line)
        if len(raw) > limit:
            print(f"... {len(raw) - limit} more (--limit)")
        if args.check:
            print("check: " + ("no problem found" if not problems else f"{len(problems)} problem(s):"))
            for p in problems:
                print(f"  {p}")

    emit(args, payload, human)
    return 2 if problems else 0
