"""``pih report``: the verification report on the embedded defaults."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="the verification report on the embedded defaults")
    p.add_argument("--out", default="results/report", help="output folder (default results/report)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import build_report

    return build_report(args.out)
