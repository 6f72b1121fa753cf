"""``pih simulate``: run a simulation preset (JAX) and write records, a Markdown report and PNG plots."""

from __future__ import annotations

from ..cli import add_format, emit

PRESET_NAMES = ("kuzmin", "harma", "disjoint", "interference", "mixed-precision", "survey", "multistage", "chain")


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="run a simulation preset on generated tensors",
        description="Compress generated weight tensors with real mechanisms (JAX, float64) and measure: "
        "kuzmin (SNR baseline), harma (magnitude x max-scaled quantization), disjoint (Theorems 1-2), "
        "interference, mixed-precision, survey (every pruner x quantizer pairing), multistage (P->Q->P and "
        "SparseGPT's joint mode), chain (multi-layer chains, sequential calibration). Writes OUT/store (records), "
        "OUT/report.md, PNG plots and OUT/summary.json; a rerun resumes from the store.",
    )
    p.add_argument("--preset", required=True, choices=PRESET_NAMES, help="which experiment")
    p.add_argument("--out", default=None,
                   help="output folder (default results/sim/PRESET-ASSUMPTIONS-quick|full: runs never overwrite "
                   "each other)")
    p.add_argument("--quick", action="store_true", help="small layers and two seeds (seconds, for smoke tests)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 2 quick, 6 full)")
    p.add_argument("--assumptions", default="A1", help="assumption set by name (see sim.assumptions)")
    p.add_argument("--nu", type=float, default=4.0, help="Student-t degrees of freedom (kuzmin)")
    p.add_argument("--threads", type=int, default=0,
                   help="XLA's CPU threads in this process (default 0: XLA's own, one per CPU); with --executor "
                   "ray each worker has as many as its task's CPUs unless this is given")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="keep XLA's compiled programs in DIR and load them in later runs and Ray workers instead of "
                   "compiling again (~3 s saved per process on 2 cores; default $PIH_JAX_CACHE, else off; the "
                   "records are the same either way)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_format(p)
    from ..executors import add_executor_args

    add_executor_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..validate import check_int, check_number, check_output_folder

    # one validation of the whole run before JAX is imported or anything is computed
    out = args.out or f"results/sim/{args.preset}-{args.assumptions}-{'quick' if args.quick else 'full'}"
    check_output_folder("--out", out)
    check_output_folder("--out", f"{out}/store")
    if args.seeds is not None:
        check_int("--seeds", args.seeds, 1, why="the number of seeds must be >= 1")
    check_number("--nu", args.nu, positive=True)
    from ..validate import check_threads

    check_threads("--threads", args.threads)
    import os

    if args.threads:  # read when sim is imported, here and in every Ray worker (PIH_* is forwarded)
        os.environ["PIH_XLA_THREADS"] = str(args.threads)
    if args.compile_cache is not None:  # read when sim is imported, here and in every Ray worker
        off = args.compile_cache.strip().lower() == "off"
        if not off:
            check_output_folder("--compile-cache", args.compile_cache)
        os.environ["PIH_JAX_CACHE"] = (args.compile_cache if off  # a worker's folder, whatever its working folder
                                       else os.path.abspath(os.path.expanduser(args.compile_cache)))
    from ..executors import Imports, executor_from_args, using

    executor = executor_from_args(args)
    try:  # with --executor ray, each seed's group of records is computed on a worker; this process stores them
        with executor, using(executor):
            executor.warm(Imports(("sim.sweep", "sim.presets")))  # the workers import JAX while this process does
            from sim.assumptions import get as assumption_set  # imports JAX only when the command runs

            assumption_set(args.assumptions)
            from sim.presets import run_preset

            summary = run_preset(args.preset, out, quick=args.quick, seeds=args.seeds, assumptions=args.assumptions,
                                 progress=not args.no_progress, nu=args.nu)
    except KeyboardInterrupt:
        from ..errors import Interrupted

        raise Interrupted(f"interrupted: every finished seed is stored in {out}/store; run the same command again "
                          "to resume") from None
    summary["out"] = out

    def human() -> None:
        print(f"preset {args.preset}: report {out}/report.md, records {out}/store")
        for k, v in summary.items():
            if isinstance(v, (int, float, str)) or (isinstance(v, list) and len(v) <= 4 and
                                                    all(isinstance(x, (int, float)) for x in v)):
                print(f"  {k}: {v}")

    emit(args, summary, human)
    return 0
