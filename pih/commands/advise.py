"""``pih advise MODEL --prune SPEC --quantize SPEC [...] [--verify]``: which order to use, how much it matters, how
sure we are — from cheap layer-wise measurements (see :mod:`pih.bridge.advise`), optionally verified for real."""

from __future__ import annotations

import argparse
import sys

from ..cli import add_format, emit
from ..errors import PihError

SPEC_HELP = """\
method specs:
  --prune CRITERION:RATIO | CRITERION:N:M
      CRITERION: magnitude | wanda | sparsegpt.  e.g. sparsegpt:0.5, wanda:2:4 (2 kept of every 4), magnitude:0.6
  --quantize QUANTIZER:BITS[:OPTION...]
      QUANTIZER: rtn (round to nearest) | gptq.  OPTION: gN (one scale per N input weights, e.g. g128) | channel
      (default) | tensor | asym (default) | sym | absmax (default) | mse | stochastic (rtn only).
      e.g. gptq:4, rtn:4:g128, rtn:3:sym:mse
  Both options repeat (up to 4 methods in all, every order is compared). The methods are listed prunes first.

what it does:
  1. one pass over the calibration windows on the dense model; per linear layer (a stratified --layers fraction
     of them) every order is applied to the dense weight with the bridge's own compressors and scored by the
     layer's output error tr(dW H dW^T) (relative to tr(W H W^T) by default). Predicted best order: the smallest
     summed error. Two methods: predicted A(Q->P) = E(P first) - E(Q first) (> 0: quantize first).
  2. the model with each method alone and with the first quantizer at a few bit widths (--curve-bits, or stepped
     until every method is bracketed) is evaluated on --eval-tokens tokens (only the measured layers
     compressed): the CERs, what the Progressive Intensity Hypothesis would predict, and an error->perplexity map
     giving the expected gain in perplexity.
  3. --verify runs every order with the real engine (sequential calibration, --verify-tokens tokens) and reports
     the measured advantage, whether the prediction was right, the regret and the measured wall times.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "advise", help="which order to use: a cheap layer-wise prediction, its evidence, optional verification",
        description="Predict the best order of pruning and quantization methods on a causal language model from "
        "cheap layer-wise measurements, with the evidence (per-layer agreement, CERs, what PIH would say), the "
        "expected gain in perplexity and the time it cost; --verify runs every order for real.",
        epilog=SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="smollm2 | tiny-llama[:corpus[:steps]] | a local causal-LM folder (llama, mistral, "
                   "qwen2/3, gemma 1-3, phi3, olmo 1-3, granite, ...) | a hub id of the local Hugging Face cache "
                   "(org/name) | a .gguf file")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer folder for a model folder that ships none")
    p.add_argument("--prune", action="append", default=[], metavar="SPEC", help="a pruning method (repeatable)")
    p.add_argument("--quantize", action="append", default=[], metavar="SPEC",
                   help="a quantization method (repeatable)")
    p.add_argument("--verify", action="store_true", help="also run every order with the real engine")
    p.add_argument("--layers", type=float, default=0.25,
                   help="fraction of the linear layers measured, stratified by type and depth (default 0.25)")
    p.add_argument("--eval-tokens", type=int, default=1024, help="evaluation tokens of advise's few "
                   "evaluations (default 1024)")
    p.add_argument("--verify-tokens", type=int, default=16384, help="evaluation tokens of --verify (default 16384)")
    p.add_argument("--curve-bits", type=int, nargs="+", default=None,
                   help="bit widths of the first quantizer's curve for the CERs (default: step the bit width from "
                   "the quantizer's own until every method's perplexity is bracketed, within 2..8)")
    p.add_argument("--order-only", action="store_true",
                   help="skip the evaluations: the layer-wise order and its confidence only (no CER, no PIH "
                   "comparison, no expected gain in perplexity)")
    p.add_argument("--weighting", choices=("relative", "raw"), default="relative",
                   help="sum layer errors relative to each layer's output energy (default) or raw")
    p.add_argument("--data", default="kjv", help="evaluation text: kjv | pydoc | wikitext2[:FOLDER of its raw "
                   "files] | file:PATH (used whole) | PATH (split 90/10)")
    p.add_argument("--calibration", default=None, help="calibration text (default: the --data corpus)")
    p.add_argument("--calibration-size", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=128, help="window length in tokens (default 128)")
    p.add_argument("--offgrid", choices=("requantize", "keep", "forbid"), default="requantize",
                   help="SparseGPT after quantization: snap updates back onto the grid (default), keep, forbid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--cache", default=None, help="model cache folder (default $PIH_CACHE or ~/.cache/pih)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write DIR/README.md, PNG figures and the measured records (DIR/store)")
    p.add_argument("--store", default=None, metavar="DIR", help="records store (default DIR/store with --report)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_format(p)
    p.set_defaults(func=run)


# -- spec syntax (no torch) ----------------------------------------------------------------------------------
def parse_prune(text: str):
    from ..methods import Prune

    parts = str(text).split(":")
    crit = parts[0].strip().lower()
    if crit not in ("magnitude", "wanda", "sparsegpt"):
        raise PihError(f"--prune={text!r}: unknown criterion {crit!r}; use magnitude, wanda or sparsegpt "
                       "(e.g. sparsegpt:0.5, wanda:2:4)")
    try:
        nums = [float(parts[1])] if len(parts) == 2 else [int(x) for x in parts[1:]] if len(parts) == 3 else None
    except ValueError:
        raise PihError(f"--prune={text!r}: expected CRITERION:RATIO or CRITERION:N:M with numbers") from None
    try:
        if nums is not None and len(nums) == 1:
            return Prune(nums[0], criterion=crit)
        if nums is not None:
            n, m = nums
            if not 0 < n < m:
                raise PihError(f"N:M needs 0 < N < M (N kept of every M), got {n}:{m}")
            return Prune(1 - n / m, criterion=crit, structure=f"{n}:{m}")
    except PihError as exc:
        raise PihError(f"--prune={text!r}: {exc}") from None
    raise PihError(f"--prune={text!r}: expected CRITERION:RATIO or CRITERION:N:M (e.g. sparsegpt:0.5, wanda:2:4)")


def parse_quantize(text: str):
    from ..methods import Quantize

    parts = str(text).split(":")
    kind = parts[0].strip().lower()
    if kind not in ("rtn", "gptq") or len(parts) < 2:
        raise PihError(f"--quantize={text!r}: expected rtn:BITS[:OPTION...] or gptq:BITS[:OPTION...] "
                       "(e.g. gptq:4, rtn:4:g128)")
    try:
        bits = int(parts[1])
    except ValueError:
        raise PihError(f"--quantize={text!r}: the bit width {parts[1]!r} is not an integer") from None
    kw = {"group": "channel", "symmetric": False, "scale": "absmax", "update": "gptq" if kind == "gptq" else "none"}
    for opt in parts[2:]:
        o = opt.strip().lower()
        if o in ("channel", "tensor"):
            kw["group"] = o
        elif o.startswith("g") and o[1:].isdigit():
            kw["group"] = int(o[1:])
        elif o in ("sym", "asym"):
            kw["symmetric"] = o == "sym"
        elif o in ("absmax", "mse"):
            kw["scale"] = o
        elif o == "stochastic" and kind == "rtn":
            kw["rounding"] = "stochastic"
        else:
            raise PihError(f"--quantize={text!r}: unknown option {opt!r}; options: gN, channel, tensor, sym, asym, "
                           "absmax, mse, stochastic (rtn)")
    try:
        return Quantize(bits, **kw)
    except PihError as exc:
        raise PihError(f"--quantize={text!r}: {exc}") from None


def methods_from_args(args) -> tuple:
    methods = tuple(parse_prune(s) for s in args.prune) + tuple(parse_quantize(s) for s in args.quantize)
    if len(methods) < 2:
        raise PihError(f"pih advise needs at least two methods (got {len(methods)}): give --prune and --quantize")
    if len(methods) > 4:
        raise PihError(f"pih advise compares at most 4 methods (got {len(methods)}: {len(methods)}! orders)")
    return methods


def run(args) -> int:
    from pathlib import Path

    methods = methods_from_args(args)
    import torch  # noqa: F401 - loaded before the thread policy applies to it

    from ..bridge.advise import AdviseConfig, advise, human_report, write_report
    from ..threads import set_threads

    set_threads(args.threads)
    cfg = AdviseConfig(model=args.model, methods=methods, seed=args.seed, eval=args.data,
                       calibration=args.calibration or args.data, seqlen=args.seqlen,
                       calibration_size=args.calibration_size, eval_tokens=args.eval_tokens,
                       verify_tokens=args.verify_tokens, weighting=args.weighting,
                       curve_bits=tuple(args.curve_bits) if args.curve_bits else None,
                       layer_fraction=args.layers, evaluate=not args.order_only,
                       settings={"offgrid": args.offgrid}, device=args.device,
                       threads=args.threads, cache=args.cache, tokenizer=args.tokenizer)
    store = args.store or (str(Path(args.report) / "store") if args.report else None)
    out = advise(cfg, verify=args.verify, store=store, progress=not args.no_progress)
    if args.report:
        out["report"] = str(write_report(out, args.report))
    emit(args, out, lambda: sys.stdout.write(human_report(out)))
    return 0
