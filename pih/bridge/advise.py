"""``pih advise``: predict the best order of n compression methods cheaply, with its evidence, and verify it.

Cheap measurement (no sequential runs, no evaluation of composed models):

1. One pass over the calibration windows, block by block on the **dense** model: for every compressible linear
   layer the dense weight W, the dense Hessian H = 2/n·Σ x xᵀ and the mean squared input per column (Wanda).
2. Per layer, every order of the methods is applied to W with the bridge's own compressors and the engine's
   conventions (:func:`apply_spec`: masks kept by later stages, SparseGPT's updates snapped back onto an earlier
   quantizer's grid under the ``requantize`` policy, the engine's seeded tie-breaking). Stage prefixes are shared
   (P alone is the first stage of P→Q). The layer's output error of an order is tr(ΔW H ΔWᵀ), ΔW = W − W_final,
   relative to tr(W H Wᵀ) (``weighting="relative"``, default) or raw.
3. The predicted best order minimises the summed layer error. For two methods the predicted order advantage is
   A(Q→P) ∝ E(P first) − E(Q first) (positive: quantize first).
4. Placing methods on the quantization curve: the model with each method alone (the one-shot layer-wise weights
   above) and with the reference quantizer alone at a few bit widths is evaluated on a few evaluation tokens. This
   gives each method's CER (``QuantCurve.cer``, censoring honoured), C_Q = 16/b, the order the Progressive
   Intensity Hypothesis predicts (:func:`pih.order.predicted_order`), and an error→perplexity map (the measured
   (E, perplexity) points, monotone, linearly interpolated) that turns the layer-wise errors into an expected
   perplexity of every order: the expected gain in the metric's units.
5. Confidence: the per-layer differences between the best and the runner-up order — the fraction of layers that
   agree with the sign of the total, a bootstrap over layers of the sign of the sum, and the margin in units of the
   per-layer spread (Σd / (√L·sd(d))).

``verify=True`` then runs every order with the real engine (:class:`pih.bridge.experiment.Runner`: sequential
calibration, full evaluation tokens) and reports the measured order advantage, whether the prediction was right,
the regret M(best) − M(predicted), and the wall time of advising against the wall time of trying every order.
Everything measured goes to a :class:`pih.Store` (``store=``) with full provenance.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import Prune, Quantize, Record, Store, pipeline_label, registry
from ..advice import (  # noqa: F401
    WEIGHTINGS,
    attach_calibration,
    confidence,
    error_to_metric,
    evidence,
    layer_weights,
    load_calibration,
    next_curve_bits,
)
from ..errors import bad
from ..order import all_orders
from ..render import advice_text as human_report  # noqa: F401  (pih advise's text report)
from ..render_plots import advice_report as write_report  # noqa: F401  (its Markdown report and plots)
from . import kernels as _kernels  # noqa: F401  (registers the torch kernels advise looks up)
from ._common import offline_env

offline_env()

MAX_METHODS = 4


@dataclass
class AdviseConfig:
    model: str
    methods: tuple
    seed: int = 0  # the calibration seed
    model_seed: int = 0  # the tiny models' training seed (ignored for model folders, GGUF files and hub ids)
    eval: str = "kjv"
    calibration: str = "kjv"
    seqlen: int = 128
    calibration_size: int = 32
    eval_tokens: int = 1024  # advise's few evaluation tokens (the quantization curve)
    verify_tokens: int = 16384  # --verify: the real evaluation
    curve_bits: tuple[int, ...] | None = None  # None: bracket each method by stepping the bit width (cheapest)
    weighting: str = "relative"
    layer_fraction: float = 0.25  # stratified subset of layers measured (1 = every layer)
    evaluate: bool = True  # False: the layer-wise order only (no CER, no PIH, no gain in perplexity)
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    cache: str | None = None
    n_boot: int = 2000
    tokenizer: str | None = None  # a tokenizer folder for model folders that ship none


def check_methods(methods) -> tuple:
    methods = tuple(methods)
    if len(methods) < 2:
        raise bad("methods", [m.label for m in methods], "pih advise needs at least two methods (a --prune and a "
                  "--quantize, or more)")
    if len(methods) > MAX_METHODS:
        raise bad("methods", [m.label for m in methods], f"at most {MAX_METHODS} methods ({math.factorial(5)}+ "
                  "orders are not worth predicting layer by layer)")
    for m in methods:
        if isinstance(m, Prune):
            if m.structure in ("row", "head", "block") or not registry.has_kernel(m, "torch"):
                names = ", ".join(registry.with_kernel("prune", "torch"))
                raise bad("prune", m.label, f"pih advise predicts layer-wise pruners ({names}; unstructured or "
                          "N:M); block removal changes no layer's error: use pih run")
        elif isinstance(m, Quantize):
            if m.rotation is not None:
                raise bad("quantize", m.label, "rotation is not supported by the layer-wise predictor")
        else:
            raise bad("methods", m, "must be Prune or Quantize specs")
    if len({m.label for m in methods}) != len(methods):
        raise bad("methods", [m.label for m in methods], "a method is given twice")
    return methods


# -- one spec on one weight matrix, as the engine applies it ------------------------------------------------------
def apply_spec(spec, W, H, norm2, mask, grid, settings, gen):
    """Apply ``spec`` to the float weight ``W`` exactly as the engine does for one layer (given that layer's
    calibration statistics): :func:`pih.bridge.engine.compress_matrix`. Returns ``(new_W, mask, grid)``."""
    from .engine import compress_matrix

    newW, mask, grid, _, _ = compress_matrix(spec, W, H, norm2, mask, grid, settings, gen)
    return newW, mask, grid


def _out_err(dW, H) -> float:
    d = dW.double()
    return float(((d @ H.double()) * d).sum())


def _fisher_err(dW, F) -> float:
    return float((F * dW.float() ** 2).sum())


def channel_err(dW, H, c) -> float:
    """Σ_o c_o (ΔW H ΔWᵀ)_oo: each output channel's error weighted by ``c`` (for ``c`` the loss's mean squared
    gradient at that output, :func:`output_grad_sq`, the second-order loss change under a Kronecker-factored
    Fisher E[x xᵀ] ⊗ diag E[g²], i.e. inputs and output gradients independent)."""
    d = dW.double()
    return float((((d @ H.double()) * d).sum(1) * c.double()).sum())


# -- the cheap measurement -------------------------------------------------------------------------------------
@dataclass
class LayerwiseResult:
    layers: list[str]
    ref: np.ndarray  # (L,) tr(W H Wᵀ)
    errors: dict[tuple, np.ndarray]  # order (tuple of spec indices) -> (L,) tr(ΔW H ΔWᵀ)
    weights: dict[int, dict[str, Any]]  # spec index -> {layer: weight after that spec alone}
    seconds: dict[str, float]
    spec_seconds: dict[int, float]
    spec_calls: dict[int, int]  # how many whole-model stage applications each spec's time covers
    inputs: dict[str, tuple] = field(default_factory=dict)  # layer -> (dense W, H, mean squared input)
    weighted: dict[str, dict[tuple, np.ndarray]] = field(default_factory=dict)  # kind -> order -> (L,) errors


def sample_layers(lm, fraction: float) -> list[str]:
    """A deterministic, stratified subset of the compressible linear layers: for every layer type (q_proj, ...,
    down_proj) about ``fraction`` of the blocks, spread evenly over depth and rotated between types."""
    from .blocks import layer_names
    from .models import linears_of

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise bad("layers", fraction, "the fraction of layers must lie in (0, 1]")
    names = layer_names(lm)
    if fraction >= 1:
        return names
    n_blocks = len(lm.blocks())
    m = max(1, round(fraction * n_blocks))
    types = list(linears_of(lm.blocks()[0]))
    chosen = set()
    for j, t in enumerate(types):
        for i in range(m):
            b = (j + round(i * n_blocks / m)) % n_blocks
            chosen.add(f"{lm.block_name(b)}.{t}")
    return [n for n in names if n in chosen]


def measure_layerwise(lm, calib, specs, orders, keep_alone, settings, seed: int = 0, progress: bool = True,
                      layers: list[str] | None = None, fisher: dict | None = None,
                      channel: dict | None = None, sensitivities: dict | None = None) -> LayerwiseResult:
    """Per layer, the output error of every order in ``orders`` (tuples of indices into ``specs``), all from the
    dense weights and dense calibration statistics; the weights of ``specs[i]`` alone for ``i in keep_alone``.
    ``layers`` restricts the measurement to those layers (the calibration pass still runs through every block).
    With ``fisher`` (layer -> diagonal Fisher of the loss, :func:`fisher_diag`) a layer's error is
    Σ F ⊙ ΔW² (the loss change to second order) instead of the output error tr(ΔW H ΔWᵀ); with ``channel`` (layer
    -> per output channel mean squared gradient of the loss at the layer's output, :func:`output_grad_sq`) it is
    Σ_o c_o (ΔW H ΔWᵀ)_oo, the output error carried to the loss (:func:`channel_err`). ``sensitivities``
    ({"fisher": F, "channel": C}, either or both) records those weighted errors as well, in ``weighted[kind]``, from
    the same compressed weights: one pass serves every weighting."""
    if fisher is not None and channel is not None:
        raise bad("fisher", "channel", "a layer's error is weighted by one sensitivity, not two")
    sensitivities = dict(sensitivities or {})
    if set(sensitivities) - {"fisher", "channel"}:
        raise bad("sensitivities", sorted(set(sensitivities) - {"fisher", "channel"})[0],
                  "is not a sensitivity (fisher, channel)")
    from tqdm.auto import tqdm

    from .blocks import walk
    from .conv import weight_matrix
    from .engine import _generator
    from .models import linears_of

    t0 = time.time()
    wanted = set(layers) if layers is not None else None
    names, ref, inputs = [], [], {}
    targets = list(dict.fromkeys(list(orders) + [(k,) for k in keep_alone]))
    errors = {o: [] for o in targets}
    weighted = {kind: {o: [] for o in targets} for kind in sensitivities}
    weights: dict[int, dict[str, Any]] = {i: {} for i in keep_alone}
    spec_seconds = {i: 0.0 for i in range(len(specs))}
    prefixes = {o[:k] for o in orders for k in range(1, len(o) + 1)} | {(i,) for i in keep_alone}
    spec_calls = {i: sum(1 for p in prefixes if p[-1] == i) for i in range(len(specs))}
    blocks = lm.blocks()
    n_layers = len(wanted) if wanted is not None else sum(len(linears_of(b)) for b in blocks)
    last = max((i for i in range(len(blocks)) if wanted is None or any(
        f"{lm.block_name(i)}.{n}" in wanted for n in linears_of(blocks[i]))), default=-1)
    bar = tqdm(total=n_layers, desc="advise: layer-wise orders", file=sys.stderr, disable=not progress, leave=False)
    t_spec = 0.0
    for step in walk(lm, calib, settings.batch_size, stats="hessian", sequential=False, layers=wanted, until=last):
        ts0 = time.time()
        for n, mod in step.layers.items():
            full = step.full(n)
            W0 = weight_matrix(mod).float().clone()  # (out, in), or a conv's 2-D view
            H, norm2 = step.stats[n].H, step.stats[n].norm2
            memo: dict[tuple, tuple] = {(): (W0, None, None)}

            def run(prefix, W0=W0, H=H, norm2=norm2, full=full, memo=memo):
                if prefix not in memo:
                    W, mask, grid = run(prefix[:-1])
                    k = len(prefix) - 1
                    s = specs[prefix[-1]]
                    ts = time.time()
                    gen = _generator(seed, k, s.label, full)
                    memo[prefix] = apply_spec(s, W.clone(), H, norm2, None if mask is None else mask.clone(), grid,
                                              settings, gen)
                    spec_seconds[prefix[-1]] += time.time() - ts
                return memo[prefix]

            names.append(full)
            inputs[full] = (W0, H, norm2)
            ref.append(_out_err(W0, H))
            for o in targets:
                dW = W0 - run(o)[0]
                errors[o].append(_fisher_err(dW, fisher[full]) if fisher is not None
                                 else channel_err(dW, H, channel[full]) if channel is not None else _out_err(dW, H))
                if "fisher" in sensitivities:
                    weighted["fisher"][o].append(_fisher_err(dW, sensitivities["fisher"][full]))
                if "channel" in sensitivities:
                    weighted["channel"][o].append(channel_err(dW, H, sensitivities["channel"][full]))
            for k in keep_alone:
                weights[k][full] = run((k,))[0].to(mod.weight.dtype).cpu()
            bar.update(1)
        t_spec += time.time() - ts0
    bar.close()
    t_pass = time.time() - t0 - t_spec  # the walk: the calibration pass and each block's statistics
    return LayerwiseResult(names, np.asarray(ref), {o: np.asarray(v) for o, v in errors.items()}, weights,
                           {"calibration_passes": t_pass}, spec_seconds, spec_calls, inputs,
                           {k: {o: np.asarray(v) for o, v in d.items()} for k, d in weighted.items()})


def fisher_diag(lm, calib, layers: list[str]) -> dict:
    """The empirical diagonal Fisher of the next-token loss for the weights of ``layers``: per weight, the mean
    over the calibration windows of the squared gradient of the window's mean token loss (one backward pass per
    window; the other parameters are frozen meanwhile and restored after)."""
    import torch

    from .conv import weight_matrix
    from .evaluate import token_losses

    with _gradients_of(lm, layers) as mods:
        weights = [mods[n].weight for n in layers]
        acc = [torch.zeros_like(weight_matrix(mods[n]), dtype=torch.float32) for n in layers]
        for x in calib:
            grads = torch.autograd.grad(token_losses(lm, x[None]).mean(), weights)
            for a, g in zip(acc, grads, strict=True):
                a += g.float().reshape(a.shape) ** 2
    return {n: a / len(calib) for n, a in zip(layers, acc, strict=True)}


@contextlib.contextmanager
def _gradients_of(lm, layers: list[str]):
    """Gradients on for the weights of ``layers`` only (every other parameter frozen) while the block runs, every
    parameter's requires_grad restored after; yields the model's modules by name (each of ``layers`` checked)."""
    mods = dict(lm.model.named_modules())
    missing = [n for n in layers if n not in mods]
    if missing:
        raise bad("layers", missing[0], "is not a module of the model")
    before = [p.requires_grad for p in lm.model.parameters()]
    try:
        for p in lm.model.parameters():
            p.requires_grad_(False)
        for n in layers:
            mods[n].weight.requires_grad_(True)
        yield mods
    finally:
        for p, r in zip(lm.model.parameters(), before, strict=True):
            p.requires_grad_(r)


def output_grad_sq(lm, calib, layers: list[str]) -> dict:
    """Per layer of ``layers``, per output channel: the mean over the calibration windows of the squared gradient
    of the window's mean token loss with respect to the layer's output, summed over the window's tokens (and a
    convolution's positions). The gradient reaches each layer's output through every later block, so weighting a
    layer's output error by it carries the error to the loss (one backward pass per window)."""
    import torch

    from .evaluate import token_losses

    acc: dict[str, torch.Tensor] = {}

    def hook(name):
        def on_output(_mod, _inp, out):
            def on_grad(g):
                g = g.detach().float()
                dims = [d for d in range(g.dim()) if d != (1 if g.dim() == 4 else g.dim() - 1)]
                sq = (g ** 2).sum(dim=dims)
                acc[name] = acc[name] + sq if name in acc else sq
            if out.requires_grad:
                out.register_hook(on_grad)
        return on_output

    with _gradients_of(lm, layers) as mods:  # the layers' outputs need a gradient; the weights' own are discarded
        weights = [mods[n].weight for n in layers]
        handles = [mods[n].register_forward_hook(hook(n)) for n in layers]
        try:
            for x in calib:
                token_losses(lm, x[None]).mean().backward()
                for w in weights:
                    w.grad = None
        finally:
            for h in handles:
                h.remove()
    missing = [n for n in layers if n not in acc]
    if missing:
        raise bad("layers", missing[0], "received no gradient from the loss")
    return {n: acc[n] / len(calib) for n in layers}


def add_alone(lw: LayerwiseResult, specs, k: int, settings, seed: int = 0, dtype=None) -> None:
    """``specs[k]`` alone on every measured layer, from the kept dense weights and statistics (no new pass)."""
    from .engine import _generator

    ts = time.time()
    errs, ws = [], {}
    for full in lw.layers:
        W0, H, norm2 = lw.inputs[full]
        newW, _, _ = apply_spec(specs[k], W0.clone(), H, norm2, None, None, settings,
                                _generator(seed, 0, specs[k].label, full))
        errs.append(_out_err(W0 - newW, H))
        ws[full] = newW.to(dtype or W0.dtype).cpu()
    lw.errors[(k,)] = np.asarray(errs)
    lw.weights[k] = ws
    lw.spec_seconds[k] = lw.spec_seconds.get(k, 0.0) + time.time() - ts
    lw.spec_calls[k] = lw.spec_calls.get(k, 0) + 1


# -- the whole advice ------------------------------------------------------------------------------------------
def make_runner(cfg: AdviseConfig, progress: bool = True):
    """The :class:`pih.bridge.experiment.Runner` (model, calibration and evaluation windows) ``advise`` uses;
    pass it to several ``advise`` calls with the same model and data to load them once."""
    from .experiment import ExperimentConfig, Runner

    ecfg = ExperimentConfig(name="advise", model=cfg.model, seed=cfg.seed, model_seed=cfg.model_seed,
                            device=cfg.device, dtype=cfg.dtype,
                            threads=cfg.threads, analysis=False, cache=cfg.cache, eval=cfg.eval,
                            calibration=cfg.calibration, seqlen=cfg.seqlen, eval_tokens=cfg.verify_tokens,
                            calibration_size=cfg.calibration_size, settings=dict(cfg.settings),
                            tokenizer=cfg.tokenizer)
    return Runner(ecfg, progress=progress)


def _validate(cfg: AdviseConfig) -> None:
    if cfg.weighting not in WEIGHTINGS:
        raise bad("weighting", cfg.weighting, f"must be one of {WEIGHTINGS}")
    for name in ("seqlen", "calibration_size", "eval_tokens", "verify_tokens"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(name, v, "must be a positive integer")
    lf = cfg.layer_fraction
    if isinstance(lf, bool) or not isinstance(lf, (int, float)) or not 0 < lf <= 1:
        raise bad("layers", lf, "the fraction of layers must lie in (0, 1]")
    if cfg.eval_tokens < cfg.seqlen:
        raise bad("eval_tokens", cfg.eval_tokens, f"must be at least one window (seqlen={cfg.seqlen})")
    for b in cfg.curve_bits or ():
        Quantize(int(b))  # validates the bit width


def _install(lm, weights: dict) -> None:
    from .conv import set_weight_matrix
    from .models import linears_of

    for i, blk in enumerate(lm.blocks()):
        for n, mod in linears_of(blk).items():
            set_weight_matrix(mod, weights[f"{lm.block_name(i)}.{n}"].to(mod.weight.device))


def _ppl_of(lm, weights: dict | None, dense: dict, windows, batch_size: int) -> float:
    from .evaluate import perplexity

    _install(lm, weights or dense)
    return perplexity(lm, windows, batch_size)["ppl"]


def _same_data(runner, cfg: AdviseConfig) -> None:
    rc = runner.cfg
    for name in ("model", "seed", "model_seed", "eval", "calibration", "seqlen", "calibration_size", "device",
                 "dtype", "tokenizer"):
        have = getattr(rc, name)
        if name == "model_seed" and have is None:
            have = 0  # the runner's default model seed
        if have != getattr(cfg, name):
            raise bad("runner", f"{name}={have!r}", f"the runner was built for another {name} "
                      f"than the advice ({getattr(cfg, name)!r})")
    if rc.eval_tokens != cfg.verify_tokens:
        raise bad("runner", f"eval_tokens={rc.eval_tokens}", f"differs from verify_tokens={cfg.verify_tokens}")


def advise(cfg: AdviseConfig, verify: bool = False, store: str | Path | None = None, progress: bool = True,
           runner=None, calibration: dict | None = None) -> dict:
    """Predict the best order of ``cfg.methods`` (and with ``verify`` run every order for real). See module doc.
    ``runner``: an existing :func:`make_runner` for the same model and data (its loading is then not repeated);
    ``calibration``: a :func:`pih.advice.calibration_table` dict (default: the one shipped with pih)."""
    from .. import Provenance
    from .engine import BridgeSettings, CompressionState, _check_pipeline

    methods = check_methods(cfg.methods)
    _validate(cfg)
    settings = BridgeSettings(**cfg.settings)
    n = len(methods)
    t_start = time.time()
    if runner is None:
        runner = make_runner(cfg, progress)
    else:
        _same_data(runner, cfg)
        runner.progress = progress
        runner._restore(runner._snaps[runner._base_key])
    lm = runner.lm
    if lm.arch != "llama":
        raise bad("model", cfg.model, "pih advise works on causal language models (metric: perplexity)")
    for m in methods:  # N:M or group sizes that do not divide a layer: refused before anything runs
        _check_pipeline(lm, (m,), settings, CompressionState())
    t_setup = time.time() - t_start
    # the reference quantizer (the first one) at every curve bit width
    ref_q = next((m for m in methods if isinstance(m, Quantize)), None)
    specs = list(methods)
    curve_idx: dict[int, int] = {}
    if ref_q is not None and cfg.evaluate:
        for b in sorted({int(b) for b in (cfg.curve_bits or ())} | {ref_q.bits}):
            q = ref_q.replace(bits=b)
            if q in specs:
                curve_idx[b] = specs.index(q)
            else:
                specs.append(q)
                curve_idx[b] = len(specs) - 1
    idx_orders = [tuple(o) for o in all_orders(range(n))]
    keep = sorted(set(range(n)) | set(curve_idx.values()))

    sampled = sample_layers(lm, cfg.layer_fraction)
    n_all = len(sample_layers(lm, 1.0))
    scale = n_all / len(sampled)  # partial -> whole model (first order: perplexity increments add over layers)
    t0 = time.time()
    lw = measure_layerwise(lm, runner.calib, specs, idx_orders, keep, settings, cfg.seed, progress, sampled)
    t_layerwise = time.time() - t0

    # the few-token evaluations: dense, each method alone, the reference quantizer's curve
    from tqdm.auto import tqdm

    from .engine import effective_weights

    dense_w = effective_weights(lm, CompressionState())
    n_win = max(1, cfg.eval_tokens // cfg.seqlen)
    few = runner.eval_windows[:n_win]
    t0 = time.time()
    ppl: dict[Any, float] = {}
    variants = ["dense"] + keep if cfg.evaluate else []
    for v in tqdm(variants, desc="advise: few-token evaluations", file=sys.stderr, disable=not progress,
                  leave=False):
        ppl[v] = _ppl_of(lm, None if v == "dense" else {**dense_w, **lw.weights[v]}, dense_w, few,
                         settings.batch_size)
    # auto curve: step the reference quantizer's bit width until every other method is bracketed
    t_curve = 0.0
    if ref_q is not None and cfg.curve_bits is None and cfg.evaluate:
        targets = [ppl[k] for k, m in enumerate(methods)
                   if not (isinstance(m, Quantize) and m.replace(bits=ref_q.bits) == ref_q)]
        tc = time.time()
        while (nb := next_curve_bits({b: ppl[i] for b, i in curve_idx.items()}, targets)) is not None:
            specs.append(ref_q.replace(bits=nb))
            k = len(specs) - 1
            curve_idx[nb] = k
            keep.append(k)
            variants.append(k)
            add_alone(lw, specs, k, settings, cfg.seed, next(lm.model.parameters()).dtype)
            ppl[k] = _ppl_of(lm, {**dense_w, **lw.weights[k]}, dense_w, few, settings.batch_size)
        t_curve = time.time() - tc
    if variants:
        _install(lm, dense_w)
    t_evals = time.time() - t0 - t_curve if variants else 0.0
    eval_s_per_window = t_evals / (len(variants) * few.shape[0]) if variants else None

    # the evidence: numbers in, a frozen Advice out (pih.advice)
    t_advise = t_layerwise + t_evals + t_curve
    adv = evidence(methods, idx_orders, lw.layers, lw.ref, lw.errors, keep, ppl, curve_idx,
                   {k: specs[k].label for k in keep}, cfg.weighting, scale, cfg.n_boot, cfg.seed, cfg.evaluate,
                   f", {len(sampled)} of {n_all} layers, increments scaled by {scale:.3g}" if scale != 1 else "")
    best, pih_order = adv.best, adv.pih
    E = {o: adv.summed_errors[o] for o in idx_orders}
    E_alone = {k: adv.summed_errors[(k,)] for k in keep}
    out: dict[str, Any] = {"model": lm.name, **adv.to_dict()}
    out["measurement"] = {
        "calibration": f"{runner.provenance.calibration} x{cfg.calibration_size}, seqlen {cfg.seqlen}, dense "
                       "inputs, one pass (no sequential recalibration)",
        "layers_used": len(lw.layers), "layers_total": n_all, "layer_fraction": cfg.layer_fraction,
        "partial_models": scale != 1,
        "partial_note": "each method alone and the curve are evaluated with only the measured layers compressed "
                        "(the others dense)" if scale != 1 else None,
        "eval_tokens": int(few.numel()), "evaluations": len(variants), "curve_bits": sorted(curve_idx),
        "settings": settings.to_dict()}
    cost = {"setup_s": t_setup, "layerwise_s": t_layerwise, "evals_s": t_evals, "curve_s": t_curve,
            "advise_s": t_advise,
            "calibration_passes_s": lw.seconds["calibration_passes"],
            "spec_s": {specs[k].label: v for k, v in lw.spec_seconds.items()}}
    prefixes = {o[:k] for o in idx_orders for k in range(1, n + 1)}
    est = 0.0
    for p in prefixes:
        s = p[-1]
        per_stage = lw.spec_seconds[s] / max(1, lw.spec_calls[s]) * scale
        needs_pass = not (isinstance(specs[s], Quantize) and specs[s].update == "none") and not (
            isinstance(specs[s], Prune) and specs[s].criterion == "magnitude")
        est += per_stage + (lw.seconds["calibration_passes"] if needs_pass else 0.0)
    n_full = runner.eval_windows.shape[0]
    est += len(idx_orders) * n_full * (eval_s_per_window or 0.0)
    cost["trying_every_order_estimate_s"] = est
    cost["estimate_note"] = ("estimate from this run's per-stage timings: distinct stage prefixes x (compressor "
                             "time + one calibration pass) + every order evaluated on the full tokens"
                             + ("" if cfg.evaluate else "; evaluation time unknown (no evaluations): not included"))
    out["cost"] = cost

    if verify:
        out["verify"] = _verify(runner, methods, idx_orders, best, pih_order, settings, progress)
        out["cost"]["trying_every_order_s"] = out["verify"]["seconds"]
        out["cost"]["ratio_measured"] = out["verify"]["seconds"] / t_advise
    out["cost"]["ratio_estimated"] = est / t_advise
    out["provenance"] = _provenance(runner, cfg, settings)
    out["model_info"] = {"family": lm.family.model_type if lm.family is not None else lm.arch,
                         "n_linear_layers": n_all, "n_parameters": int(sum(p.numel() for p in lm.model.parameters()))}
    # how sure, from advise's own verified outcomes (pih/data/advise_calibration.json)
    attach_calibration(out, load_calibration() if calibration is None else calibration)
    if store is not None:
        _store(Path(store), runner, cfg, methods, specs, keep, ppl, E, E_alone, idx_orders, lw, out, settings,
               Provenance)
        out["store"] = str(store)
    return out


def _verify(runner, methods, idx_orders, best, pih_order, settings, progress) -> dict:
    from tqdm.auto import tqdm

    from .evaluate import perplexity

    runner._snaps = {runner._base_key: runner._snaps[runner._base_key]}  # no prefix computed by anyone else
    t0 = time.time()
    ppl = {}
    for o in tqdm(idx_orders, desc="verify: every order", file=sys.stderr, disable=not progress, leave=False):
        pl = tuple(methods[i] for i in o)
        runner.compress(pl, settings)
        ppl[o] = perplexity(runner.lm, runner.eval_windows, settings.batch_size)["ppl"]
    secs = time.time() - t0
    runner._restore(runner._snaps[runner._base_key])  # leave the model dense
    dense = perplexity(runner.lm, runner.eval_windows, settings.batch_size)["ppl"]  # the regret's scale (untimed)
    real_best = min(idx_orders, key=lambda o: ppl[o])
    lab = lambda o: pipeline_label(tuple(methods[i] for i in o))  # noqa: E731
    out = {"ppl": {lab(o): ppl[o] for o in idx_orders}, "best": lab(real_best),
           "prediction_right": best == real_best, "regret_ppl": ppl[best] - ppl[real_best],
           "dense_ppl": dense, "regret_of_dense": (ppl[best] - ppl[real_best]) / dense,
           "eval_tokens": int(runner.eval_windows.numel()), "seconds": secs}
    if pih_order is not None:
        out["pih_right"] = pih_order == real_best
        out["pih_regret_ppl"] = ppl[pih_order] - ppl[real_best]
    # the trivial baseline: every pruner (as listed) before every quantizer, the production tools' convention
    pf = tuple(i for i, m in enumerate(methods) if isinstance(m, Prune)) + tuple(
        i for i, m in enumerate(methods) if not isinstance(m, Prune))
    if pf in ppl:
        out["prune_first"] = lab(pf)
        out["prune_first_right"] = pf == real_best
        out["prune_first_regret_ppl"] = ppl[pf] - ppl[real_best]
    if len(methods) == 2:
        iq = next((i for i, m in enumerate(methods) if isinstance(m, Quantize)), None)
        ip = next((i for i, m in enumerate(methods) if isinstance(m, Prune)), None)
        if iq is not None and ip is not None:
            out["A_QP_ppl"] = ppl[(ip, iq)] - ppl[(iq, ip)]
    return out


def _provenance(runner, cfg, settings) -> dict:
    p = runner.provenance.to_dict()
    p.pop("versions", None)
    p["settings"] = {**p["settings"], "advise_eval_tokens": cfg.eval_tokens, "weighting": cfg.weighting,
                     "curve_bits": list(cfg.curve_bits) if cfg.curve_bits else "auto",
                     "layer_fraction": cfg.layer_fraction}
    return p


def _store(path, runner, cfg, methods, specs, keep, ppl, E, E_alone, idx_orders, lw, out, settings, Provenance):
    """Everything advise measured, with provenance: the few-token perplexities (metric neg_perplexity, eval
    tokens advise's own), the layer-wise errors of every order (metric neg_layerwise_error, per-layer arrays), and
    the verified perplexities (the engine's own provenance)."""
    rp = runner.provenance
    common = dict(backend="torch", model=rp.model, data=rp.data, seqlen=rp.seqlen, calibration=rp.calibration,
                  calibration_size=rp.calibration_size, seed=rp.seed)
    few = Provenance(metric="neg_perplexity", settings={
        "bridge": settings.to_dict(), "eval_tokens": out["measurement"]["eval_tokens"], "dtype": cfg.dtype,
        "ppl_protocol": "gptq-wanda", "calibration_mode": "one-shot dense (pih advise)",
        "layer_fraction": cfg.layer_fraction}, **common)
    lwp = Provenance(metric="neg_layerwise_error", settings={
        "bridge": settings.to_dict(), "dtype": cfg.dtype, "weighting": cfg.weighting,
        "layer_fraction": cfg.layer_fraction,
        "calibration_mode": "one-shot dense (pih advise)", "error": "sum over layers of tr(dW H dW^T)"
        + (" / tr(W H W^T)" if cfg.weighting == "relative" else "")}, **common)
    st = Store(path)
    recs = [Record(few, (), -ppl["dense"], {"source": "pih advise", "what": "dense"})] if "dense" in ppl else []
    for k in (keep if "dense" in ppl else []):
        recs.append(Record(few, (specs[k],), -ppl[k], {"source": "pih advise", "what": "alone"},
                           {"ppl": ppl[k], "layerwise_error": E_alone[k]}))
    for o in idx_orders:
        pl = tuple(methods[i] for i in o)
        recs.append(Record(lwp, pl, -E[o], {"source": "pih advise", "what": "layer-wise order"},
                           {"predicted_ppl": out["orders"][idx_orders.index(o)]["predicted_ppl"]},
                           {"layer_errors": lw.errors[o], "layer_ref": lw.ref}))
    if "verify" in out:
        for o in idx_orders:
            pl = tuple(methods[i] for i in o)
            p = out["verify"]["ppl"][pipeline_label(pl)]
            recs.append(Record(rp, pl, -p, {"source": "pih advise --verify", "order": pipeline_label(pl)},
                               {"ppl": p}))
    have = st.keys()
    for r in recs:
        if r.key not in have:
            st.append(r)


