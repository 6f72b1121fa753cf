"""``pih report``: the verification report on the embedded defaults."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="the verification report on the embedded defaults",
        description="Run the simulation presets and a real-weights run (tiny LLaMA, trained offline on first "
        "use) and write OUT/README.md with their figures and plots. Reruns resume from the stores.",
    )
    p.add_argument("--out", default="results/report", help="output folder (default results/report)")
    p.add_argument("--quick", action="store_true", help="small simulation sizes (for a fast look)")
    p.add_argument("--sections", nargs="+", default=["sim", "bridge"], choices=["sim", "bridge"],
                   help="which sections to run (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import build_report
    from ..validate import check_output_folder

    check_output_folder("--out", args.out)

    return build_report(args.out, quick=args.quick, sections=tuple(args.sections), progress=not args.no_progress)
