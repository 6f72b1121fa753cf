"""``pih cer``: compression equivalent ratios from a measured quantization-only curve."""

from __future__ import annotations

from ..cli import add_format, add_ratio_base, emit, ratio_from_args
from ..metrics import QuantCurve


def register(sub) -> None:
    p = sub.add_parser(
        "cer",
        help="CER of methods from the reference quantizer's curve",
        description="Place methods on the reference quantizer's curve: the compression ratio at which "
        "quantization alone performs as each method does (linear interpolation, C_Q(b) = BASE/b). Values "
        "outside the measured range are reported as censored, never extrapolated.",
    )
    p.add_argument("--bits", type=float, nargs="+", required=True, help="bit widths measured (quantizer alone)")
    p.add_argument("--perf", type=float, nargs="+", required=True, help="metric M at each bit width (higher=better)")
    p.add_argument("--value", type=float, nargs="+", required=True, help="M of each method alone")
    add_ratio_base(p)
    p.add_argument("--isotonic", action="store_true", help="fit a non-increasing curve first")
    add_format(p)
    p.set_defaults(func=run)


def run(args) -> int:
    curve = QuantCurve(args.bits, args.perf, ratio=ratio_from_args(args), isotonic=args.isotonic)
    rows = [{"perf": v, **curve.cer(v).to_dict()} for v in args.value]
    payload = {
        "convention": f"C_Q(b) = {args.base:g}/b",
        "curve": {"ratio": curve.x.tolist(), "perf": curve.raw_y.tolist(), "fitted": curve.y.tolist()},
        "curve_monotone": curve.monotone,
        "violations": curve.violations,
        "rows": rows,
    }

    def human() -> None:
        print(f"reference curve ({payload['convention']}): " + ", ".join(
            f"{x:.3g}->{y:.4g}" for x, y in zip(curve.x, curve.raw_y, strict=True)))
        if not curve.monotone:
            pairs = ", ".join("(" + ", ".join(f"{x:.4g}" for x in v) + ")" for v in curve.violations)
            print(f"WARNING: the curve is not monotone (performance rises with compression) between ratios {pairs}"
                  + (" (isotonic fit used)" if args.isotonic else " (use --isotonic to fit)"))
        from ..render import fmt, table

        cells = []
        for r in rows:
            if r["censored"]:
                note = f"censored: {r['censored']} than every measured point (bound {r['bound']:.4g})"
            elif len(r["crossings"]) > 1:
                note = "ambiguous: the curve crosses M at " + ", ".join(f"{c:.4g}" for c in r["crossings"])
            else:
                note = ""
            cells.append([f"{r['perf']:.6g}", fmt(r["value"], ".4g"), note])
        for line in table(["M", "CER", "note"], cells, "rrl"):
            print(line)

    emit(args, payload, human)
    return 0
