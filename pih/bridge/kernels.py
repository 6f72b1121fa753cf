"""The torch bridge's kernels: one per registered method, against the contract of :mod:`pih.registry`::

    kernel(spec, W, stats, state, key, setting, *, options=BridgeSettings()) -> (W_new, state_new)

- ``spec``: the core spec; ``setting``: its numeric setting (the pruning ratio or the bit width; the engine passes
  the spec's own value, or a mixed-precision layer's bit width);
- ``W``: one float32 weight matrix (out, in) (a convolution's 2-D view, :mod:`pih.bridge.conv`); ``stats``:
  :class:`pih.registry.Stats` (``H`` = 2/n Σ x xᵀ, ``norm2`` the mean squared input per column), filled as the
  method's ``stats`` asks;
- ``state``: :class:`pih.registry.KernelState` (``pruned``: bool mask, ``grid``: a :class:`pih.bridge.quant.Grid`,
  ``offgrid``: the policy for weights an updating pruner moves off that grid); a kernel returns it with its mask or
  grid and, for SparseGPT after a quantizer, ``moved``/``kept`` (weights moved off the grid, before the policy);
- ``key``: a ``torch.Generator`` (ties broken at random), or a tensor of priorities of ``W``'s shape (ties ranked
  by it, stochastic rounding's noise): what the parity suite gives the bridge and the simulation alike;
- ``options``: the :class:`pih.bridge.engine.BridgeSettings` (OBS block size, damping, selection rule, Hessian
  precision, act order).

Block removal is registered with ``scope="model"``: its kernel receives a :class:`ModelStage` (the loaded model,
the compression state, the calibration set and the settings) in place of ``W``.

A new pruner or quantizer for the bridge is its spec entry (``pih.registry.register_method``) and one
``register_kernel(NAME, "torch", fn)`` of a function with this signature (see docs/plugins.md); the engine, ``pih
run`` and ``pih advise`` then run it unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import registry
from ..registry import KernelState, Stats
from ._common import bad
from .blocks import set_removed, walk
from .conv import matrix_shape
from .evaluate import calib_loss
from .models import linears_of
from .prune import magnitude, sparsegpt, wanda
from .quant import gptq, rtn
from .settings import BridgeSettings


def _opts(options):
    return BridgeSettings() if options is None else options


def _masked(W: torch.Tensor, mask: torch.Tensor, state: KernelState):
    return W.masked_fill(mask, 0), state.replace(pruned=mask)


def magnitude_kernel(spec, W, stats: Stats, state: KernelState, key, setting, *, options=None):
    """Unstructured (per tensor) or N:M magnitude pruning; earlier pruned entries count first."""
    return _masked(W, magnitude(W, setting, spec.nm, state.pruned, key, _opts(options).selection), state)


def wanda_kernel(spec, W, stats: Stats, state: KernelState, key, setting, *, options=None):
    """Wanda (|w| · ||x_j||, per output row, or N:M)."""
    return _masked(W, wanda(W, stats.norm2, setting, spec.nm, state.pruned, key, _opts(options).selection), state)


def sparsegpt_kernel(spec, W, stats: Stats, state: KernelState, key, setting, *, options=None):
    """SparseGPT's mask and OBS update of the kept weights; after a quantizer, the off-grid policy acts on the
    weights the update moved (requantize: snapped back onto the earlier grid; keep; forbid: refused)."""
    o = _opts(options)
    newW, mask = sparsegpt(W, stats.H, setting, spec.nm, o.blocksize, o.percdamp, state.pruned, key, o.selection,
                           o.hessian_dtype)
    moved = kept = 0
    grid = state.grid
    if grid is not None:
        if state.offgrid == "forbid":
            raise bad("offgrid", "forbid", f"{spec.label} after quantization moves weights off the grid")
        moved = int((~grid.on_grid(newW) & ~mask).sum())
        kept = int((~mask).sum())
        if state.offgrid == "requantize":
            newW = grid.quantize(newW, mask)
    return newW, state.replace(pruned=mask, moved=moved, kept=kept)


def quantizer_of(spec):
    """The uniform quantizer a quantize or mixed-precision spec runs (mixed precision: its quantizer at the first
    layer's bit width; the engine passes each layer's bit width as the kernel's ``setting``)."""
    return spec if spec.kind == "quantize" else spec.quantizer(0)


def _quantizer(spec):
    check_quantizer(spec)
    return quantizer_of(spec)


def check_quantizer(spec) -> None:
    """Refuse what the bridge's quantizers do not implement (before anything runs: the engine calls it)."""
    q = quantizer_of(spec)
    if getattr(q, "grid", "full") != "full":
        raise bad("grid", q.grid, "the torch bridge quantizes on the full grid only (the odd grid is the "
                  "simulation's)")


def rtn_kernel(spec, W, stats: Stats, state: KernelState, key, setting, *, options=None):
    """Round to nearest (or stochastic rounding, noise from ``key``) on the spec's grid; pruned entries stay 0."""
    q = _quantizer(spec)
    newW, grid = rtn(W, setting, q.group, q.symmetric, q.scale, state.pruned, q.rounding, key)
    return newW, state.replace(grid=grid)


def gptq_kernel(spec, W, stats: Stats, state: KernelState, key, setting, *, options=None):
    """GPTQ: columns quantized in order, each one's error spread over the later columns by H⁻¹."""
    o = _opts(options)
    q = _quantizer(spec)
    newW, grid = gptq(W, stats.H, setting, q.group, q.symmetric, q.scale, o.act_order, o.blocksize, o.percdamp,
                      state.pruned, o.hessian_dtype)
    return newW, state.replace(grid=grid)


@dataclass
class ModelStage:
    """What a model-scope kernel (block removal) acts on: the loaded model, its compression state (removed blocks,
    masks), the calibration set, the settings, a progress flag and the stage's log entry."""

    lm: Any
    compression: Any  # pih.bridge.engine.CompressionState
    calib: torch.Tensor
    settings: Any
    progress: bool
    entry: dict


def remove_blocks_kernel(spec, model: ModelStage, stats, state, key, setting, *, options=None):
    """SLEB-like block removal (:func:`remove_blocks`)."""
    remove_blocks(model.lm, spec, model.compression, model.calib, model.settings, model.progress, model.entry)
    return model, state


# -- block removal (model scope) ----------------------------------------------------------------------------
def _loss_without(lm, i, inps, removed, calib, batch_size, labels) -> float:
    """:func:`calib_loss` of the model without blocks ``removed`` and ``i``, given ``inps``, the inputs of block ``i``
    (per calibration batch) in the model without ``removed``: blocks ``<= i`` are skipped and block ``i`` passes on
    its cached input, so only the blocks after ``i`` and the head run. The same operations on the same inputs as
    the full forward pass: the same loss."""
    feed = iter(inps)

    def hook(module, args, kwargs):
        hs = next(feed)[0]
        if args:
            return (hs, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hs}

    set_removed(lm, sorted(set(removed) | set(range(i + 1))))
    h = lm.blocks()[i].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        return calib_loss(lm, calib, batch_size, labels)
    finally:
        h.remove()
        set_removed(lm, removed)


def remove_blocks(lm, spec, state, calib, settings, progress, entry):
    """SLEB-like: repeatedly remove the block whose removal raises the calibration loss least.

    Each round caches the input of block 0 and advances it block by block through the current model, so the loss
    without candidate ``i`` runs only the blocks after ``i`` (:func:`_loss_without`): about half the block passes
    of a full forward per candidate, with the same losses and so the same choice."""
    n_blocks = len(lm.blocks())
    target = int(round(spec.ratio * n_blocks))
    if target >= n_blocks:
        raise bad("ratio", spec.ratio, f"would remove all {n_blocks} blocks")
    n_removable = sum(lm.removable(i) for i in range(n_blocks))  # ResNet: only blocks with an identity shortcut
    if target > n_removable:
        raise bad("ratio", spec.ratio, f"would remove {target} blocks; only {n_removable} of {n_blocks} keep their "
                  "input's shape and can be removed")
    labels = getattr(lm, "calib_labels", None)
    losses = []
    bar = tqdm(total=max(0, target - len(state.removed)), desc=spec.label, file=sys.stderr, disable=not progress,
               leave=False)
    while len(state.removed) < target:
        best, best_loss = None, float("inf")
        cand = [i for i in range(n_blocks) if i not in state.removed and lm.removable(i)]
        set_removed(lm, state.removed)
        # the input of block i, i = 0, 1, ..., advanced through the current model (removed blocks skipped)
        for step in walk(lm, calib, settings.batch_size, skip=state.removed, until=cand[-1]):
            if step.index in cand:
                loss = _loss_without(lm, step.index, step.inputs, state.removed, calib, settings.batch_size, labels)
                if loss < best_loss:
                    best, best_loss = step.index, loss
        state.removed.append(best)
        losses.append(best_loss)
        set_removed(lm, state.removed)
        bar.update(1)
    bar.close()
    set_removed(lm, state.removed)
    for i in state.removed:  # every linear of a removed block counts as pruned
        for n, m in linears_of(lm.blocks()[i]).items():
            state.masks[f"{lm.block_name(i)}.{n}"] = torch.ones(matrix_shape(m), dtype=torch.bool)
    entry["removed"] = list(state.removed)
    entry["calib_losses"] = losses


BUILTIN = (
    ("magnitude", "prune", "layer", magnitude_kernel),
    ("wanda", "prune", "layer", wanda_kernel),
    ("sparsegpt", "prune", "layer", sparsegpt_kernel),
    ("loss", "prune", "model", remove_blocks_kernel),
    ("none", "quantize", "layer", rtn_kernel),
    ("gptq", "quantize", "layer", gptq_kernel),
)


registry.register_builtins("torch", BUILTIN)
