"""Apply a pipeline of :mod:`pih.methods` specs to a real model, block by block.

Each stage runs over the model's blocks in order. Calibration inputs of block ``i`` are the outputs of blocks
``< i`` *as already compressed by this stage* (and by every earlier stage), captured by hooks, as in the
reference implementations of GPTQ, SparseGPT and Wanda. All linear layers of a block are compressed from one
forward pass over the block's calibration inputs (which stops once every layer has its input); then the block's
outputs are recomputed with its compressed weights and fed to the next block. On a CPU with several threads the
layers of a block are compressed side by side, one thread each (:class:`_Layers`): every kernel runs on one
thread whatever the run's thread count, so a run's weights do not depend on it. Stages without calibration
(magnitude, RTN) skip the forward passes.

:class:`CompressionState` records what earlier stages did: the pruning mask of every linear layer (kept exactly by
later stages), the quantization grid of every quantized layer (for the off-grid policy), removed blocks, and a
per-stage log. Off-grid policy, when a later weight update (SparseGPT after quantization) moves weights off the
grid: ``requantize`` (snap the kept weights back onto the same grid), ``keep`` (leave them, log the fraction), or
``forbid`` (refuse the pipeline).

Every spec runs through its method's registered torch kernel (:mod:`pih.bridge.kernels`, ``pih.registry
.kernel_for(spec, "torch")``); the calibration statistics a block collects are those the method's registry entry
asks for, and the walk over blocks with their inputs is :func:`pih.bridge.blocks.walk`. A method registered by a
plugin runs here unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from .. import registry
from ..methods import MixedPrecision, Prune, Quantize
from ..registry import KernelState, Stats
from . import sweep
from ._common import bad
from .blocks import layer_names, walk
from .conv import matrix_shape, set_weight_matrix, weight_matrix
from .kernels import ModelStage, check_quantizer, quantizer_of
from .models import LoadedModel, linears_of
from .quant import Grid
from .settings import OFFGRID_POLICIES, BridgeSettings  # noqa: F401  (re-exported: pih.bridge.engine.BridgeSettings)


@dataclass
class CompressionState:
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # True = pruned
    grids: dict[str, Grid] = field(default_factory=dict)
    removed: list[int] = field(default_factory=list)
    rotated: bool = False
    log: list[dict[str, Any]] = field(default_factory=list)

    def clone(self) -> CompressionState:
        return CompressionState({k: v.clone() for k, v in self.masks.items()},
                                {k: copy.deepcopy(v) for k, v in self.grids.items()},
                                list(self.removed), self.rotated, copy.deepcopy(self.log))


def _generator(seed: int, *parts: object) -> torch.Generator:
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


# -- stages -----------------------------------------------------------------------------------------------------
def _check_pipeline(lm: LoadedModel, pipeline, settings: BridgeSettings, state: CompressionState) -> None:
    quantized = bool(state.grids)
    for blk in lm.blocks():  # refuses layers the bridge cannot compress (grouped convs) before anything runs
        linears_of(blk)
    for i, spec in enumerate(pipeline):
        if not isinstance(spec, (Prune, Quantize, MixedPrecision)):
            raise bad(f"pipeline[{i}]", spec, "must be a Prune, Quantize or MixedPrecision spec")
        if isinstance(spec, Prune):
            if spec.structure in ("row", "head"):
                raise bad("structure", spec.structure, "the torch bridge supports unstructured, N:M and block")
            if spec.structure == "block" and spec.criterion != "loss":
                raise bad("criterion", spec.criterion, "block removal uses criterion='loss' (RemoveBlocks)")
            registry.kernel_for(spec, "torch")  # a method without a torch kernel is refused here, by name
            if registry.method_of(spec).updates_kept and quantized and settings.offgrid == "forbid":
                raise bad("offgrid", "forbid", f"{spec.label} after quantization moves weights off the grid")
            if spec.nm is not None:
                for blk in lm.blocks():
                    for n, m in linears_of(blk).items():
                        try:
                            spec.check_shape(matrix_shape(m))
                        except Exception as exc:
                            raise bad("structure", spec.structure, f"layer {n}: {exc}") from None
        else:
            registry.kernel_for(spec, "torch")
            check_quantizer(spec)
            quantized = True
            if isinstance(spec, Quantize) and spec.rotation:
                from .rotate import check_rotatable

                check_rotatable(lm)
            if isinstance(spec, Quantize):
                for blk in lm.blocks():
                    for m in linears_of(blk).values():
                        spec.check_shape(matrix_shape(m))
            if isinstance(spec, MixedPrecision):
                n_lin = sum(len(linears_of(b)) for b in lm.blocks())
                if len(spec.bits) != n_lin:
                    raise bad("bits", spec.bits, f"mixed precision needs one bit width per linear layer ({n_lin})")


def apply_stage(lm: LoadedModel, spec, state: CompressionState, calib: torch.Tensor, settings: BridgeSettings,
                seed: int = 0, stage_index: int = 0, progress: bool = True, layers: set[str] | None = None) -> None:
    """Apply one spec to ``lm.model`` in place, updating ``state``. ``layers`` restricts it to those layers."""
    t0 = time.time()
    entry: dict[str, Any] = {"stage": stage_index, "spec": spec.label}
    if registry.scope_of(spec) == "model":  # block removal: the model-scope kernel
        kernel = registry.kernel_for(spec, "torch")
        kernel(spec, ModelStage(lm, state, calib, settings, progress, entry), None, None, None, spec.ratio,
               options=settings)
    elif isinstance(spec, MixedPrecision) and settings.mp_order != "as_listed":
        names = layer_names(lm)
        groups = sorted(set(spec.bits), reverse=settings.mp_order == "progressive")
        entry["mp_groups"] = groups
        for bits in groups:
            sub = {n for n, b in zip(names, spec.bits, strict=True) if b == bits}
            _layerwise(lm, spec, state, calib, settings, seed, stage_index, progress, entry, sub, bits_override=bits)
    else:
        _layerwise(lm, spec, state, calib, settings, seed, stage_index, progress, entry, layers)
    entry["seconds"] = round(time.time() - t0, 3)
    state.log.append(entry)


def _needs(spec) -> str | None:
    """The calibration statistics the spec's method asks for (its registry entry): None | "norms" | "hessian"."""
    need = registry.method_of(spec).stats
    return None if need == "none" else need


def compress_matrix(spec, W: torch.Tensor, H: torch.Tensor | None, norm2: torch.Tensor | None,
                    mask: torch.Tensor | None, grid: Grid | None, settings: BridgeSettings, gen,
                    bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, Grid | None, int, int]:
    """One spec on one float weight matrix through its registered torch kernel (:mod:`pih.bridge.kernels`),
    given its layer's calibration statistics (``H``: Hessian, ``norm2``: mean squared input per column) and what
    earlier stages left (``mask``: True = pruned, kept exactly; ``grid``: an earlier quantizer's grid, for the
    off-grid policy). ``bits`` overrides a quantizer's bit width (mixed precision); ``gen``: a generator or
    tie-break priorities. Returns (new weight, mask, grid, weights moved off ``grid``, weights kept) — the last two
    count only for an updating pruner after a quantizer. The engine and ``pih advise`` both compress through it."""
    kernel = registry.kernel_for(spec, "torch")
    if isinstance(spec, Prune):
        setting = spec.ratio
    else:
        setting = quantizer_of(spec).bits if bits is None else bits
    state = KernelState(pruned=mask, grid=grid, offgrid=settings.offgrid)
    newW, out = kernel(spec, W, Stats(H=H, norm2=norm2), state, gen, setting, options=settings)
    return newW, out.pruned, out.grid, int(out.moved), int(out.kept)


class _Layers:
    """Compress a block's layers side by side, one CPU thread each, when the run has several threads: they are
    independent (each from its own weight and the block's calibration statistics, collected before any of them
    changes), and their column sweeps are sequential work that leaves all but one core idle. The largest start
    first; the results are those of one layer at a time, bitwise (each kernel runs the same operations on one
    thread, as its column sweep already does), applied in the block's order. On a GPU or with one thread: in
    turn."""

    def __init__(self, device: torch.device):
        self.workers = torch.get_num_threads() if device.type == "cpu" else 1
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            sweep.use_compiled()  # compile the column loop once, before any worker needs it
            self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pih-layer")
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown()

    def run(self, calls: list[Callable[[], Any]], costs: list[int]) -> list[Any]:
        """Every call's result, in order (the forward passes around it keep the run's threads)."""
        if self.pool is None or len(calls) < 2:
            return [c() for c in calls]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            futures = {i: self.pool.submit(calls[i]) for i in sorted(range(len(calls)), key=lambda i: -costs[i])}
            return [futures[i].result() for i in range(len(calls))]
        finally:
            torch.set_num_threads(threads)


def _layerwise(lm, spec, state, calib, settings, seed, stage_index, progress, entry, layers, bits_override=None):
    need = _needs(spec)
    names = layer_names(lm)
    mp_bits = dict(zip(names, spec.bits, strict=True)) if isinstance(spec, MixedPrecision) else None
    offgrid_moved = offgrid_total = 0
    device = next(lm.model.parameters()).device
    with _Layers(device) as pool:
        for step in walk(lm, calib if need else None, settings.batch_size, stats=need,
                         sequential=settings.sequential, layers=layers, skip=state.removed, desc=spec.label,
                         progress=progress):
            calls, costs, mods = [], [], []
            for n, mod in step.layers.items():
                full = step.full(n)
                W = weight_matrix(mod)  # (out, in) or a conv's (out, in·kh·kw) view
                gen = _generator(seed, stage_index, spec.label, full)
                mask = state.masks.get(full)
                mask = mask.to(W.device) if mask is not None else None
                grid = state.grids.get(full)
                # a quantizer's bit width: the mixed-precision group's, the layer's, or (None) the spec's own
                bits = bits_override if bits_override is not None else (mp_bits[full] if mp_bits else None)
                st = step.stats.get(n)
                calls.append(partial(compress_matrix, spec, W.float(), None if st is None else st.H,
                                     None if st is None else st.norm2, mask,
                                     None if grid is None else grid.to(W.device), settings, gen, bits))
                costs.append(W.shape[0] * W.shape[1] ** 2)
                mods.append((full, mod))
            for (full, mod), (newW, mask, grid, moved, kept) in zip(mods, pool.run(calls, costs), strict=True):
                offgrid_moved += moved
                offgrid_total += kept
                if isinstance(spec, Prune):
                    state.masks[full] = mask.cpu()
                else:
                    state.grids[full] = grid.to("cpu")
                if mask is not None and bool((newW[mask] != 0).any()):  # pragma: no cover - guarded by construction
                    raise RuntimeError(f"mask of {full} not preserved by {spec.label}")
                set_weight_matrix(mod, newW)
    if offgrid_total:
        entry["offgrid_fraction"] = offgrid_moved / offgrid_total
        entry["offgrid_policy"] = settings.offgrid


def apply_pipeline(lm: LoadedModel, pipeline, calib: torch.Tensor, settings: BridgeSettings | None = None,
                   state: CompressionState | None = None, seed: int = 0, progress: bool = True,
                   start_index: int = 0) -> CompressionState:
    """Apply ``pipeline`` (specs in application order) to ``lm`` in place; returns the compression state."""
    settings = settings or BridgeSettings()
    state = state or CompressionState()
    _check_pipeline(lm, pipeline, settings, state)
    for k, spec in enumerate(pipeline):
        apply_stage(lm, spec, state, calib, settings, seed, start_index + k, progress)
    return state


def effective_weights(lm: LoadedModel, state: CompressionState) -> dict[str, torch.Tensor]:
    """The weight each compressible linear layer contributes (zero for layers of removed blocks), on CPU."""
    out = {}
    for i, blk in enumerate(lm.blocks()):
        for n, m in linears_of(blk).items():
            w = weight_matrix(m).detach().float().cpu()
            out[f"{lm.block_name(i)}.{n}"] = torch.zeros_like(w) if i in state.removed else w.clone()
    return out
