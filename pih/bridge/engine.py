"""Apply a pipeline of :mod:`pih.methods` specs to a real model, block by block.

Each stage runs over the model's blocks in order. Calibration inputs of block ``i`` are the outputs of blocks
``< i`` *as already compressed by this stage* (and by every earlier stage), captured by hooks, as in the
reference implementations of GPTQ, SparseGPT and Wanda. All linear layers of a block are compressed from one
forward pass over the block's calibration inputs; then the block's outputs are recomputed with its compressed
weights and fed to the next block. Stages without calibration (magnitude, RTN) skip the forward passes.

:class:`CompressionState` records what earlier stages did: the pruning mask of every linear layer (kept exactly by
later stages), the quantization grid of every quantized layer (for the off-grid policy), removed blocks, and a
per-stage log. Off-grid policy, when a later weight update (SparseGPT after quantization) moves weights off the
grid: ``requantize`` (snap the kept weights back onto the same grid), ``keep`` (leave them, log the fraction), or
``forbid`` (refuse the pipeline).
"""

from __future__ import annotations

import copy
import hashlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..methods import MixedPrecision, Prune, Quantize
from ._common import bad
from .conv import input_rows, matrix_shape, n_cols, set_weight_matrix, weight_matrix
from .models import LoadedModel, linears_of
from .prune import SELECTIONS, magnitude, sparsegpt, wanda
from .quant import HESSIAN_DTYPES, Grid, gptq, rtn

OFFGRID_POLICIES = ("requantize", "keep", "forbid")


@dataclass(frozen=True)
class BridgeSettings:
    """Method settings the specs do not carry. Recorded in every record's provenance."""

    blocksize: int = 128  # GPTQ / SparseGPT lazy-batch block (SparseGPT's mask block)
    percdamp: float = 0.01  # Hessian damping, fraction of mean diag
    act_order: bool = False  # GPTQ column order by decreasing diag(H)
    offgrid: str = "requantize"  # requantize | keep | forbid
    sequential: bool = True  # calibrate block i on the outputs of the compressed blocks < i
    batch_size: int = 8  # calibration / evaluation windows per forward
    mp_order: str = "as_listed"  # mixed precision: as_listed | progressive (high bits first) | regressive
    # precision of the damped Hessian's Cholesky factors and inverse (GPTQ / SparseGPT): float32 is the reference
    # code's (the same H⁻¹ bit for bit, hence the same weights); float64 the bridge's default before it
    hessian_dtype: str = "float32"
    # which weights a pruner takes: exact (exactly int(ratio · group) per comparison group, ties at random) or
    # reference (the reference code's: SparseGPT/magnitude every score <= the sorted value at position k, i.e.
    # k + 1 per block; Wanda ties by index; N:M by torch.topk)
    selection: str = "exact"

    def __post_init__(self) -> None:
        if self.offgrid not in OFFGRID_POLICIES:
            raise bad("offgrid", self.offgrid, f"must be one of {OFFGRID_POLICIES}")
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise bad("blocksize", self.blocksize, "must be a positive integer")
        if not (isinstance(self.percdamp, (int, float)) and 0 < self.percdamp < 1):
            raise bad("percdamp", self.percdamp, "must lie in (0, 1)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "must be a positive integer")
        if self.mp_order not in ("as_listed", "progressive", "regressive"):
            raise bad("mp_order", self.mp_order, "must be as_listed, progressive or regressive")
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise bad("hessian_dtype", self.hessian_dtype, f"must be one of {HESSIAN_DTYPES}")
        if self.selection not in SELECTIONS:
            raise bad("selection", self.selection, f"must be one of {SELECTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# -- block plumbing -------------------------------------------------------------------------------------------
class _Caught(Exception):
    pass


def _skip_forward(hidden_states, *args, **kwargs):
    return hidden_states


def set_removed(lm: LoadedModel, removed: list[int]) -> None:
    """Make exactly the blocks in ``removed`` pass their input through (weights stay in place)."""
    for i, blk in enumerate(lm.blocks()):
        if i in removed:
            blk.forward = _skip_forward
        elif "forward" in blk.__dict__:
            del blk.forward


def model_inputs(lm: LoadedModel, batch: torch.Tensor) -> dict[str, Any]:
    if lm.arch == "llama":
        return {"input_ids": batch.to(lm.device)}
    return {"pixel_values": batch.to(lm.device, dtype=next(lm.model.parameters()).dtype)}


class LayerKwargs(dict):
    """Block 0's keyword arguments, with each block's own (``by_block``) for models whose blocks receive different
    ones (sliding vs full attention masks, Gemma 3's local vs global rotary embeddings)."""

    def __init__(self, first: dict, by_block: dict[int, dict]):
        super().__init__(first)
        self.by_block = by_block


def block_kwargs(block: nn.Module, kw: dict) -> dict:
    """The keyword arguments ``block`` receives in the model's own forward pass."""
    return kw.by_block.get(id(block), kw) if isinstance(kw, LayerKwargs) else kw


def _capture_per_block(lm: LoadedModel, calib: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """Like :func:`capture_block_inputs`, recording every block's keyword arguments: each block's forward is
    replaced by a recorder that passes its input on, the last one stops the forward pass."""
    blocks = list(lm.blocks())
    saved = [blk.__dict__.get("forward") for blk in blocks]
    caught: list[tuple[torch.Tensor, dict]] = []
    rec: dict = {}

    def recorder(i):
        def fwd(hidden_states, *args, **kwargs):
            if i == 0:
                rec["hs"] = hidden_states.detach()
            rec[id(blocks[i])] = dict(kwargs)
            if i == len(blocks) - 1:
                raise _Caught
            return hidden_states
        return fwd

    try:
        for i, blk in enumerate(blocks):
            blk.forward = recorder(i)
        with torch.no_grad():
            for s in range(0, calib.shape[0], batch_size):
                rec.clear()
                try:
                    lm.model(**model_inputs(lm, calib[s : s + batch_size]))
                except _Caught:
                    pass
                by = {k: v for k, v in rec.items() if k != "hs"}
                caught.append((rec["hs"], LayerKwargs(by[id(blocks[0])], by)))
    finally:
        for blk, f in zip(blocks, saved, strict=True):
            if f is None:
                blk.__dict__.pop("forward", None)
            else:
                blk.forward = f
    return caught


def capture_block_inputs(lm: LoadedModel, calib: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """Inputs (hidden states, keyword arguments) of block 0 for each calibration batch."""
    from .families import per_layer_kwargs

    if per_layer_kwargs(lm):
        return _capture_per_block(lm, calib, batch_size)
    blocks = lm.blocks()
    first = blocks[0]
    caught: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        caught.append((hs.detach(), dict(kwargs)))
        raise _Caught

    h = first.register_forward_pre_hook(hook, with_kwargs=True)
    saved = first.__dict__.pop("forward", None)
    try:
        with torch.no_grad():
            for s in range(0, calib.shape[0], batch_size):
                try:
                    lm.model(**model_inputs(lm, calib[s : s + batch_size]))
                except _Caught:
                    pass
    finally:
        h.remove()
        if saved is not None:
            first.forward = saved
    return caught


def run_block(block: nn.Module, inps: list[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
    out = []
    with torch.no_grad():
        for hs, kw in inps:
            y = block(hs, **block_kwargs(block, kw))
            out.append((y[0] if isinstance(y, tuple) else y, kw))
    return out


class _Stats:
    """Running calibration statistics of one linear layer's input: H = 2/n Σ x xᵀ and mean ||x_j||²."""

    def __init__(self, cols: int, device, hessian: bool):
        self.H = torch.zeros(cols, cols, device=device, dtype=torch.float32) if hessian else None
        self.norm2 = torch.zeros(cols, device=device, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor, module: nn.Module | None = None) -> None:
        x, tmp = input_rows(module, x.detach())  # a conv's input: its unfolded receptive fields (pih.bridge.conv)
        x = x.float()
        total = self.n + tmp
        if self.H is not None:
            self.H *= self.n / total
            xs = (2 / total) ** 0.5 * x
            self.H += xs.t() @ xs
        self.norm2 *= self.n / total
        self.norm2 += (x**2).sum(0) / total
        self.n = total


def stats_and_outputs(block: nn.Module, inps, hessian: bool, only: set[str] | None = None):
    """One forward pass of ``block`` over ``inps``: the calibration statistics of its compressible layers (those
    named in ``only``, default all) and the block's outputs.

    Layers fed the same input tensor (q/k/v the attention's normalised input, gate/up the MLP's) share one
    :class:`_Stats`: it is computed once per distinct input, so the Hessian of q, k and v is one product, and the
    same floats as three separate ones. Sharing is decided in the first batch (the same tensor object, unmodified,
    reaching two linear layers in one forward pass) and checked in every later one."""
    lins = {n: m for n, m in linears_of(block).items() if only is None or n in only}
    stats = {n: _Stats(n_cols(m), m.weight.device, hessian) for n, m in lins.items()}
    shares: dict[str, str] = {}  # layer -> the layer whose statistics it uses
    seen: list[tuple[torch.Tensor, int, str]] = []  # this forward pass: (input, its version, the layer that took it)
    calls = {"n": 0}

    def start(module, args, kwargs):
        seen.clear()
        calls["n"] += 1

    def hook(mod, a, o, n):
        x = a[0]
        src = next((m for t, v, m in seen if t is x and v == x._version and m != n), None)
        if calls["n"] == 1 and stats[n].n == 0 and n not in shares and src is not None \
                and isinstance(mod, nn.Linear) and isinstance(lins[src], nn.Linear):
            shares[n] = shares.get(src, src)
            stats[n] = stats[shares[n]]
            return
        if n in shares:
            if src is None or shares.get(src, src) != shares[n]:  # pragma: no cover - a block's forward is fixed
                raise RuntimeError(f"layer {n} shared the input of {shares[n]} in the first calibration batch but "
                                   "not in a later one")
            return
        stats[n].add(x, mod)
        seen.append((x, x._version, n))

    hooks = [block.register_forward_pre_hook(start, with_kwargs=True)]
    hooks += [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in lins.items()]
    try:
        outs = run_block(block, inps)
    finally:
        for h in hooks:
            h.remove()
        seen.clear()
    return stats, outs


def collect_stats(block: nn.Module, inps, hessian: bool) -> dict[str, _Stats]:
    return stats_and_outputs(block, inps, hessian)[0]


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
            if spec.criterion == "sparsegpt" and quantized and settings.offgrid == "forbid":
                raise bad("offgrid", "forbid", f"{spec.label} after quantization moves weights off the grid")
            if spec.nm is not None:
                for blk in lm.blocks():
                    for n, m in linears_of(blk).items():
                        try:
                            spec.check_shape(matrix_shape(m))
                        except Exception as exc:
                            raise bad("structure", spec.structure, f"layer {n}: {exc}") from None
        else:
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


def layer_names(lm: LoadedModel) -> list[str]:
    """Full names of the compressible linear layers, in forward order (the bridge's units for MixedPrecision)."""
    out = []
    for i, blk in enumerate(lm.blocks()):
        out += [f"{lm.block_name(i)}.{n}" for n in linears_of(blk)]
    return out


def apply_stage(lm: LoadedModel, spec, state: CompressionState, calib: torch.Tensor, settings: BridgeSettings,
                seed: int = 0, stage_index: int = 0, progress: bool = True, layers: set[str] | None = None) -> None:
    """Apply one spec to ``lm.model`` in place, updating ``state``. ``layers`` restricts it to those layers."""
    t0 = time.time()
    entry: dict[str, Any] = {"stage": stage_index, "spec": spec.label}
    if isinstance(spec, Prune) and spec.structure == "block":
        _remove_blocks(lm, spec, state, calib, settings, progress, entry)
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
    if isinstance(spec, Prune):
        return {"wanda": "norm", "sparsegpt": "hessian"}.get(spec.criterion)
    if spec.update == "gptq":
        return "hessian"
    return None


def compress_matrix(spec, W: torch.Tensor, H: torch.Tensor | None, norm2: torch.Tensor | None,
                    mask: torch.Tensor | None, grid: Grid | None, settings: BridgeSettings, gen: torch.Generator,
                    bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, Grid | None, int, int]:
    """One spec on one float weight matrix, given its layer's calibration statistics (``H``: Hessian, ``norm2``:
    mean squared input per column) and what earlier stages left (``mask``: True = pruned, kept exactly; ``grid``:
    an earlier quantizer's grid, for the off-grid policy). ``bits`` overrides a quantizer's bit width (mixed
    precision). Returns (new weight, mask, grid, weights moved off ``grid``, weights kept) — the last two count
    only for SparseGPT after a quantizer. The engine and ``pih advise`` both compress through this function."""
    moved = kept = 0
    if isinstance(spec, Prune):
        nm = spec.nm
        if spec.criterion == "magnitude":
            mask = magnitude(W, spec.ratio, nm, mask, gen, settings.selection)
            newW = W.masked_fill(mask, 0)
        elif spec.criterion == "wanda":
            mask = wanda(W, norm2, spec.ratio, nm, mask, gen, settings.selection)
            newW = W.masked_fill(mask, 0)
        elif spec.criterion == "sparsegpt":
            newW, mask = sparsegpt(W, H, spec.ratio, nm, settings.blocksize, settings.percdamp, mask, gen,
                                   settings.selection, settings.hessian_dtype)
            if grid is not None:
                if settings.offgrid == "forbid":
                    raise bad("offgrid", "forbid", f"{spec.label} after quantization moves weights off the grid")
                moved = int((~grid.on_grid(newW) & ~mask).sum())
                kept = int((~mask).sum())
                if settings.offgrid == "requantize":
                    newW = grid.quantize(newW, mask)
        else:
            raise bad("criterion", spec.criterion, "not a layer-wise pruning criterion in the bridge")
        return newW, mask, grid, moved, kept
    q = spec if isinstance(spec, Quantize) else spec.quantizer(0)
    bits = q.bits if bits is None else bits
    if q.update == "gptq":
        newW, grid = gptq(W, H, bits, q.group, q.symmetric, q.scale, settings.act_order, settings.blocksize,
                          settings.percdamp, mask, settings.hessian_dtype)
    else:
        newW, grid = rtn(W, bits, q.group, q.symmetric, q.scale, mask, q.rounding, gen)
    return newW, mask, grid, 0, 0


def _layerwise(lm, spec, state, calib, settings, seed, stage_index, progress, entry, layers, bits_override=None):
    need = _needs(spec)
    names = layer_names(lm)
    mp_bits = dict(zip(names, spec.bits, strict=True)) if isinstance(spec, MixedPrecision) else None
    inps = capture_block_inputs(lm, calib, settings.batch_size) if need else None
    offgrid_moved = offgrid_total = 0
    blocks = lm.blocks()
    bar = tqdm(range(len(blocks)), desc=f"{spec.label}", file=sys.stderr, disable=not progress, leave=False)
    for i in bar:
        blk = blocks[i]
        if i in state.removed:
            continue  # a removed block passes its input through unchanged
        lins = linears_of(blk)
        todo = {n: m for n, m in lins.items() if layers is None or f"{lm.block_name(i)}.{n}" in layers}
        stats = collect_stats(blk, inps, need == "hessian") if (need and todo) else {}
        dense_out = run_block(blk, inps) if (need and not settings.sequential and i + 1 < len(blocks)) else None
        for n, mod in todo.items():
            full = f"{lm.block_name(i)}.{n}"
            W = weight_matrix(mod)  # (out, in) or a conv's (out, in·kh·kw) view
            Wf = W.float()
            gen = _generator(seed, stage_index, spec.label, full)
            mask = state.masks.get(full)
            mask = mask.to(W.device) if mask is not None else None
            grid = state.grids.get(full)
            bits = None
            if not isinstance(spec, Prune):
                q = spec if isinstance(spec, Quantize) else spec.quantizer(0)
                bits = bits_override if bits_override is not None else (mp_bits[full] if mp_bits else q.bits)
            st = stats.get(n)
            newW, mask, grid, moved, kept = compress_matrix(spec, Wf, None if st is None else st.H,
                                                            None if st is None else st.norm2, mask,
                                                            None if grid is None else grid.to(W.device), settings,
                                                            gen, bits)
            offgrid_moved += moved
            offgrid_total += kept
            if isinstance(spec, Prune):
                state.masks[full] = mask.cpu()
            else:
                state.grids[full] = grid.to("cpu")
            if mask is not None and bool((newW[mask] != 0).any()):  # pragma: no cover - guarded by construction
                raise RuntimeError(f"mask of {full} not preserved by {spec.label}")
            set_weight_matrix(mod, newW)
        if need and i + 1 < len(blocks):
            inps = run_block(blk, inps) if settings.sequential else dense_out
    if offgrid_total:
        entry["offgrid_fraction"] = offgrid_moved / offgrid_total
        entry["offgrid_policy"] = settings.offgrid


def calib_loss(lm: LoadedModel, calib: torch.Tensor, batch_size: int, labels: torch.Tensor | None = None) -> float:
    """Mean cross-entropy of the model on the calibration set (tokens for LMs, labels for classifiers)."""
    tot, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, calib.shape[0], batch_size):
            x = calib[s : s + batch_size]
            if lm.arch == "llama":
                from .evaluate import token_losses

                tot += float(token_losses(lm, x).sum())
                n += x[:, 1:].numel()
            else:
                logits = lm.model(**model_inputs(lm, x)).logits.float()
                y = labels[s : s + batch_size].to(logits.device)
                tot += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                n += y.numel()
    return tot / n


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


def _remove_blocks(lm, spec, state, calib, settings, progress, entry):
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
    blocks = lm.blocks()
    while len(state.removed) < target:
        best, best_loss = None, float("inf")
        cand = [i for i in range(n_blocks) if i not in state.removed and lm.removable(i)]
        set_removed(lm, state.removed)
        inps = capture_block_inputs(lm, calib, settings.batch_size)  # the input of block i, i = 0, 1, ...
        for i in range(cand[-1] + 1):
            if i in cand:
                loss = _loss_without(lm, i, inps, state.removed, calib, settings.batch_size, labels)
                if loss < best_loss:
                    best, best_loss = i, loss
            if i not in state.removed and i < cand[-1]:
                inps = run_block(blocks[i], inps)
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
