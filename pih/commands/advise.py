"""``pih advise MODEL --prune SPEC --quantize SPEC [...] [--verify]``: which order to use, how much it matters, how
sure we are — from cheap layer-wise measurements (see :mod:`pih.bridge.advise`), optionally verified for real."""

from __future__ import annotations

import argparse
import sys

from ..cli import add_format, emit
from ..errors import PihError

SPEC_HELP = """\
method specs (the registry's spelling, plugins included: pih --plugin my_methods.py advise ...):
  --prune CRITERION:RATIO | CRITERION:N:M    e.g. sparsegpt:0.5, wanda:2:4 (2 kept of every 4), magnitude:0.6
  --quantize QUANTIZER:BITS[:OPTION...]      OPTION: gN (one scale per N input weights, e.g. g128) | channel
      (default) | tensor | asym (default) | sym | absmax (default) | mse | stochastic (rtn only).
      e.g. gptq:4, rtn:4:g128, rtn:3:sym:mse
  Both options repeat (up to 4 methods in all, every order is compared). The methods are listed prunes first.
  pih advise predicts layer-wise methods (block removal changes no layer's error: use pih run).

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
    p.add_argument("--seed", type=int, default=0, help="calibration seed (default 0)")
    p.add_argument("--model-seed", type=int, default=0,
                   help="training seed of a tiny model (tiny-llama:...; default 0; ignored for folders and files)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--cache", default=None, help="model cache folder (default $PIH_CACHE or ~/.cache/pih)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="write DIR/README.md, PNG figures and the measured records (DIR/store)")
    p.add_argument("--store", default=None, metavar="DIR", help="records store (default DIR/store with --report)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_format(p)
    p.set_defaults(func=run)


# -- spec syntax (no torch): the registry's command-line spelling of every method, plugins included ------------
def parse_prune(text: str):
    from .. import registry

    return registry.parse_method(text, "prune")


def parse_quantize(text: str):
    from .. import registry

    return registry.parse_method(text, "quantize")


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
    from .. import validate as V

    # one validation of the whole run before the model is loaded (the rules pih run and the simulation apply)
    V.check_seed("--seed", args.seed)
    V.check_seed("--model-seed", args.model_seed)
    V.check_threads("--threads", args.threads)
    V.check_int("--calibration-size", args.calibration_size, 1)
    seqlen = V.check_seqlen(args.seqlen, name="--seqlen")
    V.check_eval_tokens(args.eval_tokens, seqlen, "--eval-tokens")
    V.check_eval_tokens(args.verify_tokens, seqlen, "--verify-tokens")
    if not 0 < V.check_number("--layers", args.layers) <= 1:
        raise PihError(f"--layers={args.layers!r}: a fraction of the linear layers, in (0, 1]")
    V.check_pipeline(methods, "methods")
    for flag in ("report", "store"):
        if getattr(args, flag):
            V.check_output_folder(f"--{flag}", getattr(args, flag))
    import torch  # noqa: F401 - loaded before the thread policy applies to it

    from ..bridge.experiment import model_max_positions

    V.check_seqlen(seqlen, model_max_positions(args.model, args.cache, args.model_seed), args.model, "--seqlen")

    from ..bridge.advise import AdviseConfig, advise, human_report, write_report
    from ..threads import set_threads

    set_threads(args.threads)
    cfg = AdviseConfig(model=args.model, methods=methods, seed=args.seed, model_seed=args.model_seed, eval=args.data,
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
