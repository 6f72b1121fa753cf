"""Benchmark of the torch bridge on SmolLM2-135M (CPU): each compressor, and the full order grid.

    python -m benchmarks.bench_bridge [--model smollm2] [--threads 2] [--calibration-size 16] [--grid]
                                      [--eval-tokens 8192] [--only NAMES] [--skip NAMES] [--json FILE]

Every figure is printed as a ratio to the dense forward pass over the evaluation tokens (the perplexity
evaluation of the dense model), measured in the same run, at the start and again at the end (the ratios use
their mean; on a shared machine the two differ), and to the dense model's size (memory). Peak memory is the
process's resident set size, sampled every 20 ms during the call, minus the size before it. The calibration set
(``--calibration-size`` windows of ``--seqlen`` tokens) is a parameter: the issue fixes the evaluation tokens
(8192), not the calibration size, and a calibrated stage costs about two block-by-block forward passes over it.

The grid (3 pruning ratios x 4 bit widths x both orders, each alone and the dense model; SparseGPT x GPTQ) is
estimated from the measured stage and evaluation times: 15 SparseGPT stages (3 alone, 12 after GPTQ), 16 GPTQ
stages (4 alone, 12 after SparseGPT) and 32 evaluations; every stage prefix is compressed once (the runner's
cache). ``--grid`` also runs it for real into ``results/bench_bridge_grid`` (resumable: a rerun computes only the
points not stored yet) and prints its wall time and its ratio to the dense forward pass. Target: the grid in under
30 minutes on 2 cores. Block removal (SLEB-like, ~90 candidate losses over the calibration set) is skipped unless
``--skip ''`` or ``--only 'block removal 10%'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0 = time.perf_counter()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.base


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="torch bridge benchmark (ratios to the dense forward pass)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--calibration-size", type=int, default=16)
    ap.add_argument("--grid", action="store_true", help="also run the full 3x4x2 grid (long)")
    ap.add_argument("--grid-store", default=str(Path("results") / "bench_bridge_grid"),
                    help="the grid's results folder (resumable)")
    ap.add_argument("--only", default=None, help="comma-separated compressor names to run")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--skip", default="block removal 10%",
                    help="comma-separated compressors to skip (default: block removal, ~90 candidate calibration "
                    "losses, about 45 calibration forward passes on SmolLM2; pass --skip '' to include it)")
    args = ap.parse_args(argv)

    import torch  # noqa: F401 - loaded before the thread policy applies to it

    from pih import Prune, Quantize, RemoveBlocks
    from pih.bridge.engine import BridgeSettings, CompressionState, apply_stage
    from pih.bridge.evaluate import perplexity
    from pih.bridge.experiment import ExperimentConfig, Runner
    from pih.bridge.rotate import rotate_model
    from pih.threads import set_threads

    set_threads(args.threads)  # torch and BLAS together
    cfg = ExperimentConfig(name="bench", model=args.model, threads=args.threads, analysis=False, eval="kjv",
                           calibration="kjv", seqlen=args.seqlen, eval_tokens=args.eval_tokens,
                           calibration_size=args.calibration_size,
                           prune={"criterion": "sparsegpt", "ratios": [0.3, 0.5, 0.7]},
                           quantize={"bits": [2, 3, 4, 8], "symmetric": False, "update": "gptq"})
    t = time.perf_counter()
    runner = Runner(cfg, progress=False)
    load_s = time.perf_counter() - t
    lm = runner.lm
    model_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    with Peak() as dense:
        ppl = perplexity(lm, runner.eval_windows, 8)["ppl"]
    base = dense.seconds  # the live ratios; the summary uses the mean with the second measurement at the end
    print(f"model {lm.name}; {args.threads} threads; eval {runner.eval_windows.numel()} tokens (seqlen "
          f"{args.seqlen}); calibration {args.calibration_size} x {args.seqlen}; load {load_s:.1f} s")
    print(f"dense forward over the eval tokens: {base:.2f} s (ppl {ppl:.3f}), peak +{dense.extra / 2**20:.0f} MiB; "
          f"model {model_bytes / 2**20:.0f} MiB")
    comps = {
        "magnitude 50%": Prune(0.5, "magnitude"),
        "wanda 50%": Prune(0.5, "wanda"),
        "wanda 2:4": Prune(0.5, "wanda", "2:4"),
        "sparsegpt 50%": Prune(0.5, "sparsegpt"),
        "sparsegpt 2:4": Prune(0.5, "sparsegpt", "2:4"),
        "block removal 10%": RemoveBlocks(0.1),
        "rtn 4b": Quantize(4, symmetric=False),
        "rtn 4b g64 mse": Quantize(4, group=64, symmetric=False, scale="mse"),
        "gptq 4b": Quantize(4, symmetric=False, update="gptq"),
        "gptq 4b act-order": Quantize(4, symmetric=False, update="gptq"),
        "rotation": None,
    }
    only = set(args.only.split(",")) if args.only else None
    skip = set(args.skip.split(",")) if args.skip else set()
    rows = []
    stage_s = {}
    for name, spec in comps.items():
        if (only and name not in only) or name in skip:
            continue
        runner._restore(runner._snaps[runner._base_key])
        st = BridgeSettings(act_order="act-order" in name)
        with Peak() as pk:
            if spec is None:
                rotate_model(lm, seed=0)
            else:
                apply_stage(lm, spec, CompressionState(), runner.calib, st, 0, 0, progress=False)
        stage_s[name] = pk.seconds
        rows.append({"compressor": name, "seconds": pk.seconds, "time_ratio": pk.seconds / base,
                     "peak_extra_mib": pk.extra / 2**20, "mem_ratio": pk.extra / model_bytes})
        print(f"  {name:<20} {pk.seconds:8.2f} s  x{pk.seconds / base:6.2f} dense fwd   peak +{pk.extra / 2**20:7.0f} "
              f"MiB  x{pk.extra / model_bytes:5.2f} model", flush=True)
    runner._restore(runner._snaps[runner._base_key])
    with Peak() as dense2:
        perplexity(lm, runner.eval_windows, 8)
    base = (dense.seconds + dense2.seconds) / 2
    print(f"dense forward again at the end: {dense2.seconds:.2f} s; ratios below use the mean {base:.2f} s")
    for r in rows:
        r["time_ratio"] = r["seconds"] / base
        print(f"  {r['compressor']:<20} x{r['time_ratio']:6.2f} dense fwd")
    out = {"model": lm.name, "threads": args.threads, "eval_tokens": int(runner.eval_windows.numel()),
           "seqlen": args.seqlen, "calibration_size": args.calibration_size, "dense_forward_s": base,
           "dense_forward_s_start_end": [dense.seconds, dense2.seconds], "model_mib": model_bytes / 2**20,
           "compressors": rows}
    if "sparsegpt 50%" in stage_s and "gptq 4b" in stage_s:
        # grid: 3 P alone + 4 Q alone + 24 second stages (12 GPTQ after P, 12 SparseGPT after Q) + 32 evaluations
        est = 15 * stage_s["sparsegpt 50%"] + 16 * stage_s["gptq 4b"] + 32 * base
        out["grid_estimate_s"] = est
        out["grid_estimate_dense_fwd"] = est / base
        print(f"grid 3x4x2 (+alone, dense) estimated from these timings (15 SparseGPT + 16 GPTQ stages + 32 "
              f"evaluations, calibration {args.calibration_size} x {args.seqlen}): {est / 60:.1f} min "
              f"(x{est / base:.1f} dense fwd); target < 30 min on 2 cores")
    if args.grid:
        from pih import Store
        from pih.bridge.experiment import run_experiment

        path = Path(args.grid_store)
        before = len(Store(path).raw()) if path.exists() else 0
        with Peak() as g:
            run_experiment(cfg, path, progress=True)
        out["grid_s"] = g.seconds
        out["grid_dense_fwd"] = g.seconds / base
        out["grid_points_already_stored"] = before
        print(f"grid 3x4x2 measured: {g.seconds:.0f} s = {g.seconds / 60:.1f} min, x{g.seconds / base:.1f} dense fwd "
              f"(dense fwd {base:.1f} s), peak +{g.extra / 2**20:.0f} MiB; store {path}"
              + (f" (resumed: {before} records were already stored, the time covers the rest)" if before else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
