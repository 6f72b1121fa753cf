"""``pih report``: the verification report on the embedded defaults."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="the verification report on the embedded defaults",
        description="Run the simulation presets that decide the simulation rows and a real-weights smoke run (tiny "
        "LLaMA, trained offline on first use), then write OUT/README.md: the verdict table (claim, source, "
        "measurement, verdict, evidence; from the committed results, with this run's verdict beside each row it "
        "reproduces), the definitions, and one section per result with its plots. Reruns resume from the stores.",
    )
    p.add_argument("--out", default=None, help="output folder (default results/report, or results/report-quick "
                   "with --quick: a quick report never overwrites a full one)")
    p.add_argument("--quick", action="store_true", help="small simulation sizes (for a fast look)")
    p.add_argument("--force", action="store_true", help="replace a report of the other mode in --out")
    p.add_argument("--sections", nargs="+", default=["sim", "bridge"], choices=["sim", "bridge"],
                   help="which sections to run (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import build_report, default_out
    from ..validate import check_output_folder

    out = args.out or default_out(args.quick)
    check_output_folder("--out", out)

    return build_report(out, quick=args.quick, sections=tuple(args.sections), progress=not args.no_progress,
                        force=args.force)
