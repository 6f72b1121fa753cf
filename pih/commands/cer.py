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
            print(f"WARNING: the curve is not monotone at ratio pairs {curve.violations}"
                  + (" (isotonic fit used)" if args.isotonic else " (use --isotonic to fit)"))
        print(f"{'M':>12}  {'CER':>10}  note")
        for r in rows:
            if r["censored"]:
                note = f"censored: {r['censored']} than every measured point (bound {r['bound']:.4g})"
                print(f"{r['perf']:>12.6g}  {'-':>10}  {note}")
            else:
                note = "ambiguous: " + ", ".join(f"{c:.4g}" for c in r["crossings"]) if len(r["crossings"]) > 1 else ""
                print(f"{r['perf']:>12.6g}  {r['value']:>10.4g}  {note}")

    emit(args, payload, human)
    return 0
