"""Benchmark (not a test): the bridge's kernels against the reference GPTQ / SparseGPT / Wanda code, on one block of
SmolLM2-135M (576 wide, 1536 MLP: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536), same weights, same
calibration inputs, same Hessians.

    python -m benchmarks.bench_kernels [--refs DIR] [--block 5] [--calibration-size 16] [--seqlen 512]
                                       [--repeats 3] [--threads 1] [--json FILE]

``--refs DIR`` (or ``$PIH_REFS``) names a folder holding checkouts of IST-DASLab/gptq, IST-DASLab/sparsegpt and
locuslab/wanda as ``gptq/``, ``sparsegpt/`` and ``wanda/`` (the reference code is never part of this repository);
without it the reference rows are skipped with a message and only the compiled sweep is measured against the
Python loop. Each kernel runs A B A B ... (ours, then the baseline, ``--repeats`` pairs) on the same inputs and
every ratio printed is baseline time / our time per pair, median over the pairs (> 1: ours is faster):

- GPTQ 4-bit (asymmetric, per channel, and groups of 64), SparseGPT 50 % and 2:4: per layer, the reference's
  ``fasterquant`` / ``fasterprune`` from the same Hessian; ours with the reference conventions selected
  (float32 H⁻¹, ``selection="reference"``), whose weights must equal the reference's bit for bit (printed);
  and SparseGPT with the engine's default selection (``exact``: k per block, random ties), timed only.
- the compiled column sweep against the Python loop (``compiled=False``): the same kernels, bitwise equal.
- the calibration statistics of the block: ours as a sequential stage collects them (``blocks.stats_and_outputs``
  without outputs: one Hessian per distinct input, the banded Gram product, each pass stopping once every layer
  has its input) against one reference ``GPTQ.add_batch`` per layer on a whole forward pass (as the reference's
  own stats pass runs it); Hessians compared bitwise.
- Wanda 50 % and 2:4 on the block (statistics, masks, the block's outputs): ours against the reference's
  ``prune_wanda`` on a one-block model holding the same block and inputs; masks compared given the reference's
  own column norms (``selection="reference"``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pairs(a, b, repeats: int) -> dict:
    """Run a() and b() alternately ``repeats`` times; times and the per-pair ratios t_b / t_a."""
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t0)
    ratios = [y / x for x, y in zip(ta, tb, strict=True)]
    return {"ours_s": statistics.median(ta), "base_s": statistics.median(tb), "ratio": statistics.median(ratios),
            "ratios": ratios}


def _refs_folder(arg: str | None) -> Path | None:
    p = arg or os.environ.get("PIH_REFS")
    if not p:
        return None
    path = Path(p).expanduser()
    return path if path.is_dir() else None


def _import_ref(refs: Path, repo: str, name: str):
    """Module ``name`` from the checkout ``refs/repo`` (their top-level ``quant`` modules collide: reloaded)."""
    path = str(refs / repo)
    sys.path.insert(0, path)
    try:
        for m in ("quant", name):
            sys.modules.pop(m, None)
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(name), importlib.import_module("quant")
    finally:
        sys.path.remove(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="bridge kernels against the reference implementations (ratios)")
    ap.add_argument("--refs", default=None, help="folder of the reference checkouts (gptq/, sparsegpt/, wanda/)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--block", type=int, default=5, help="which block's weights and inputs")
    ap.add_argument("--calibration-size", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="comma-separated kernel names")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from pih.bridge.blocks import _Stats, capture_block_inputs, run_block, stats_and_outputs
    from pih.bridge.data import calibration_windows, load_corpus, tokenize
    from pih.bridge.models import linears_of, load_model
    from pih.bridge.prune import sparsegpt, wanda
    from pih.bridge.quant import gptq
    from pih.threads import set_threads

    set_threads(args.threads)
    torch.cuda.synchronize = lambda *a, **k: None  # the reference code calls it unconditionally
    torch.cuda.empty_cache = lambda *a, **k: None
    lm = load_model(args.model, "cpu", "float32")
    corpus = load_corpus("kjv")
    calib = calibration_windows(tokenize(lm.tokenizer, corpus.train[:600_000]), args.seqlen, args.calibration_size, 0)
    inps = capture_block_inputs(lm, calib, 1)
    for blk in lm.blocks()[: args.block]:
        inps = run_block(blk, inps)
    block = lm.blocks()[args.block]
    lins = linears_of(block)
    dense = {n: m.weight.data.clone() for n, m in lins.items()}
    stats, _ = stats_and_outputs(block, inps, hessian=True)
    refs = _refs_folder(args.refs)
    only = set(args.only.split(",")) if args.only else None
    print(f"model {lm.name}, block {args.block}: " + ", ".join(f"{n.split('.')[-1]} {tuple(w.shape)}"
                                                               for n, w in dense.items()))
    print(f"calibration {args.calibration_size} x {args.seqlen} tokens; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f} at the start; {args.repeats} interleaved pairs per row")
    if refs is None:
        print("reference code not found (--refs DIR or $PIH_REFS: checkouts gptq/, sparsegpt/, wanda/): reference "
              "rows skipped")
    rows: list[dict] = []

    def report(kernel, layer, shape, r, equal, baseline):
        rows.append({"kernel": kernel, "layer": layer, "shape": list(shape), "baseline": baseline, **r,
                     "bitwise_equal": equal})
        eq = "" if equal is None else ("  bitwise equal" if equal else "  DIFFERENT")
        print(f"  {kernel:<19} {layer:<17} {str(tuple(shape)):<12} ours {r['ours_s']*1e3:8.1f} ms  {baseline} "
              f"{r['base_s']*1e3:8.1f} ms  x{r['ratio']:5.2f}{eq}", flush=True)

    kernels = {
        "gptq 4b": lambda W, H, compiled=None: gptq(W, H, 4, "channel", False, compiled=compiled)[0],
        "gptq 4b g64": lambda W, H, compiled=None: gptq(W, H, 4, 64, False, compiled=compiled)[0],
        "sparsegpt 50%": lambda W, H, compiled=None: sparsegpt(W, H, 0.5, None, selection="reference",
                                                               compiled=compiled)[0],
        "sparsegpt 2:4": lambda W, H, compiled=None: sparsegpt(W, H, 0.5, (2, 4), selection="reference",
                                                               compiled=compiled)[0],
    }
    # the engine's default selection (exactly k per block, random ties): no reference counterpart to equal
    exact = {
        "sparsegpt 50% exact": lambda W, H: sparsegpt(W, H, 0.5, None, gen=torch.Generator().manual_seed(0))[0],
        "sparsegpt 2:4 exact": lambda W, H: sparsegpt(W, H, 0.5, (2, 4), gen=torch.Generator().manual_seed(0))[0],
    }
    kernels = {k: v for k, v in kernels.items() if only is None or k in only}
    exact = {k: v for k, v in exact.items() if only is None or k in only}

    # -- the compiled sweep against the Python loop ---------------------------------------------------------------
    print("compiled column sweep against the Python loop (same kernel, compiled=False):")
    for name, fn in kernels.items():
        for n, W in dense.items():
            H = stats[n].H
            a, b = fn(W, H), fn(W, H, compiled=False)
            report(name, n, W.shape, _pairs(lambda W=W, H=H, fn=fn: fn(W, H),
                                            lambda W=W, H=H, fn=fn: fn(W, H, compiled=False), args.repeats),
                   bool(torch.equal(a, b)), "python loop")

    if refs is not None:
        RG, RGQ = _import_ref(refs, "gptq", "gptq")
        RS, _ = _import_ref(refs, "sparsegpt", "sparsegpt")

        def ref_kernel(name, W, H):
            lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
            lin.weight.data = W.clone()
            if name.startswith("gptq"):
                q = RG.GPTQ(lin)
                q.H = H.clone()
                q.quantizer = RGQ.Quantizer()
                q.quantizer.configure(4, perchannel=True, sym=False)
                with contextlib.redirect_stdout(io.StringIO()):
                    q.fasterquant(blocksize=128, percdamp=0.01, groupsize=64 if "g64" in name else -1)
            else:
                s = RS.SparseGPT(lin)
                s.H = H.clone()
                nm = "2:4" in name
                with contextlib.redirect_stdout(io.StringIO()):
                    s.fasterprune(0 if nm else 0.5, 2 if nm else 0, 4 if nm else 0, 128, 0.01)
            return lin.weight.data

        print("against the reference code (their fasterquant / fasterprune on the same Hessian):")
        for name, fn in kernels.items():
            for n, W in dense.items():
                H = stats[n].H
                equal = bool(torch.equal(fn(W, H), ref_kernel(name, W, H)))
                report(name, n, W.shape, _pairs(lambda W=W, H=H, fn=fn: fn(W, H),
                                                lambda W=W, H=H, name=name: ref_kernel(name, W, H), args.repeats),
                       equal, "reference")

        for name, fn in exact.items():
            base = name.removesuffix(" exact")
            for n, W in dense.items():
                H = stats[n].H
                report(name, n, W.shape, _pairs(lambda W=W, H=H, fn=fn: fn(W, H),
                                                lambda W=W, H=H, base=base: ref_kernel(base, W, H), args.repeats),
                       None, "reference")

        # -- calibration statistics: one Hessian per distinct input against one per layer ------------------------
        if only is None or "hessians" in only:
            print("calibration statistics of the block (its forward passes included in both):")
            held = {}

            def ref_stats():
                objs = {}
                for n, m in lins.items():
                    objs[n] = RG.GPTQ(m)
                hooks = [m.register_forward_hook(lambda mod, a, o, n=n: objs[n].add_batch(a[0].data, o.data))
                         for n, m in lins.items()]
                try:
                    run_block(block, inps)
                finally:
                    for h in hooks:
                        h.remove()
                held["ref"] = objs

            def our_stats():
                held["ours"] = stats_and_outputs(block, inps, hessian=True, outputs=False)[0]

            r = _pairs(our_stats, ref_stats, args.repeats)
            equal = all(torch.equal(held["ours"][n].H, held["ref"][n].H) for n in lins)
            report("hessians", "all 7 layers", (len(lins),), r, equal, "reference")

        # -- Wanda on the block ---------------------------------------------------------------------------------
        if only is None or any(k.startswith("wanda") for k in only):
            _wanda_rows(refs, lm, block, lins, dense, inps, args, report, torch, _Stats, stats_and_outputs,
                        run_block, wanda, only)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": lm.name, "block": args.block, "threads": args.threads,
                                               "calibration": [args.calibration_size, args.seqlen], "rows": rows},
                                              indent=2))
    return 0


def _wanda_rows(refs, lm, block, lins, dense, inps, args, report, torch, _Stats, stats_and_outputs, run_block,
                wanda, only):
    """Wanda on one block: ours (statistics, masks, outputs) against the reference's prune_wanda on a one-block
    model holding the same block, fed the same inputs."""
    from torch import nn

    sys.modules.setdefault("datasets", types.ModuleType("datasets"))
    sys.modules["datasets"].load_dataset = None  # lib.data imports it; nothing is loaded
    path = str(refs / "wanda")
    sys.path.insert(0, path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            R = importlib.import_module("lib.prune")
    finally:
        sys.path.remove(path)
    kw = inps[0][1]
    wrapped: dict = {}

    class Recorder(R.WrappedGPT):  # keeps the reference's column norms, to compare masks on the same statistics
        def __init__(self, layer, *a, **k):
            super().__init__(layer, *a, **k)
            wrapped[id(layer)] = self

    R.WrappedGPT = Recorder

    class Layer(nn.Module):  # the block, called the way the reference calls a decoder layer
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, hs, attention_mask=None, position_ids=None):
            y = self.block(hs, **kw)
            return (y[0] if isinstance(y, tuple) else y,)

    class OneBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.layers = nn.ModuleList([Layer()])
            self.config = types.SimpleNamespace(use_cache=False, hidden_size=inps[0][0].shape[-1])
            self.hf_device_map = {}
            self.seqlen = inps[0][0].shape[1]

        def forward(self, ids):
            return self.model.layers[0](inps[int(ids[0, 0])][0], attention_mask=None, position_ids=None)

    model = OneBlock()
    loader = [(torch.tensor([[j]]), None) for j in range(len(inps))]
    R.get_loaders = lambda *a, **k: (loader, None)

    def restore():
        for n, m in lins.items():
            m.weight.data = dense[n].clone()

    for name, nm in (("wanda 50%", None), ("wanda 2:4", (2, 4))):
        if only is not None and name not in only:
            continue
        ns = types.SimpleNamespace(nsamples=len(inps), seed=0, sparsity_ratio=0.5, use_variant=False)

        def ref(nm=nm, ns=ns):
            restore()
            with contextlib.redirect_stdout(io.StringIO()):
                R.prune_wanda(ns, model, None, torch.device("cpu"), prune_n=2 if nm else 0, prune_m=4 if nm else 0)

        def ours(nm=nm):
            restore()
            st, _ = stats_and_outputs(block, inps, hessian=False)
            for n, m in lins.items():
                m.weight.data = m.weight.data.masked_fill(wanda(m.weight.data, st[n].norm2, 0.5, nm,
                                                                selection="reference"), 0)
            run_block(block, inps)

        r = _pairs(ours, ref, args.repeats)
        ref(nm)
        ref_w = {n: m.weight.data.clone() for n, m in lins.items()}
        same = all(torch.equal(ref_w[n] == 0, (dense[n].masked_fill(
            wanda(dense[n], wrapped[id(m)].scaler_row, 0.5, nm, selection="reference"), 0)) == 0)
            for n, m in lins.items())
        restore()
        report(name, "block (7 layers)", (len(lins),), r, same, "reference")


if __name__ == "__main__":
    sys.exit(main())
