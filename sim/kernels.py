"""The simulation's kernels: one per registered method, against the contract of :mod:`pih.registry`::

    kernel(spec, W, stats, state, key, setting, *, options=SimOptions(), ctx=None) -> (W_new, state_new)

- ``spec``: the core spec (its numeric field is ignored: ``setting`` carries the pruning ratio, the bit width, or
  ``(ratio, bits)`` for a joint stage, as a traced value, so one compiled function serves a whole grid);
- ``W``: one layer (out, in) as a JAX array; ``stats``: :class:`pih.registry.Stats` (``H`` the inputs' Gram
  matrix, ``norm2`` its diagonal); ``key``: a JAX PRNG key, or an array of tie-break priorities of ``W``'s shape
  (ties ranked by it, and stochastic rounding uses it as its noise: what the parity suite gives both backends);
- ``state``: :class:`pih.registry.KernelState`. It is registered here as a JAX pytree (``pruned``, ``grid``,
  ``moved``, ``kept`` are its leaves, ``offgrid`` static), so kernels take and return it under ``jit`` and
  ``vmap``; the executor vmaps a kernel over the layers of a model. ``grid`` is a :class:`sim.mechanisms.QGrid`
  (None before any quantizer);
- two keywords beyond the contract, both optional: ``options`` (:class:`SimOptions`, the simulation-only
  settings) and ``ctx`` (:class:`LayerContext`: the layer as the original model has it and its row sensitivities,
  which only the row pruners' reference model "phi" and λ weighting use).

Block removal is registered with ``scope="model"``: its kernel receives :class:`Layers` (every layer's W, H, the
original W and λ) in place of ``W`` and returns it with the new weights. A rotation (``Quantize.rotation``) is the
executor's business (:func:`sim.pipeline.run_pipeline`): kernels act in the basis they are given.

A new pruner needs its spec entry (``pih.registry.register_method``) and one ``register_kernel(NAME, "sim", fn)``
of a function with this signature; nothing else in the simulation changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pih import registry
from pih.errors import PihError, bad
from pih.registry import KernelState

from . import mechanisms as mech

OFFGRID = ("requantize", "keep", "forbid")
ROTATION_SCOPES = ("model", "quantizer")


@dataclass(frozen=True)
class SimOptions:
    """Simulation-only settings of a pipeline (the bridge's names where the bridge has the setting).

    per: ranking scope of unstructured magnitude / Wanda (None: the method's own, magnitude per tensor, Wanda per
    row; "tensor" | "row"). reference: the reference model of row and block removal, "seen" (the degradation of
    the model the pruner is given) or "phi" (relative to the original model: A2's well-designed pruner); set by
    assumption sets. offgrid: weights an updating pruner (SparseGPT) moves off an earlier quantizer's grid:
    "keep" (the simulation's default: left where the update put them), "requantize" (snapped back onto that same
    grid, the bridge's default) or "forbid" (the pipeline is refused). rotation_scope: "model" (a Hadamard rotation
    fused into the model, W R and Rᵀ X) or "quantizer" (each quantizer rotates, quantizes and rotates back).
    percdamp, blocksize, act_order: the OBS settings of SparseGPT and GPTQ.
    """

    per: str | None = None
    reference: str = "seen"
    offgrid: str = "keep"
    rotation_scope: str = "model"
    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = False

    def __post_init__(self) -> None:
        if self.per not in (None, "tensor", "row"):
            raise bad("per", self.per, "must be None, 'tensor' or 'row'")
        if self.reference not in ("seen", "phi"):
            raise bad("reference", self.reference, "must be 'seen' or 'phi'")
        if self.offgrid not in OFFGRID:
            raise bad("offgrid", self.offgrid, f"must be one of {OFFGRID}")
        if self.rotation_scope not in ROTATION_SCOPES:
            raise bad("rotation_scope", self.rotation_scope, f"must be one of {ROTATION_SCOPES}")
        if isinstance(self.percdamp, bool) or not isinstance(self.percdamp, (int, float)) or not 0 < self.percdamp < 1:
            raise bad("percdamp", self.percdamp, "must lie in (0, 1)")
        if isinstance(self.blocksize, bool) or not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise bad("blocksize", self.blocksize, "must be a positive integer")
        if not isinstance(self.act_order, bool):
            raise bad("act_order", self.act_order, "must be True or False")

    @classmethod
    def of(cls, options: SimOptions | dict | None) -> SimOptions:
        """``options`` as SimOptions (a dict names its fields; unknown names are refused)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if not isinstance(options, dict):
            raise bad("options", options, "expected SimOptions or a dict of its fields")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(options) - known:
            raise bad("options", sorted(set(options) - known), f"unknown simulation options; allowed: {sorted(known)}")
        return cls(**options)

    def replace(self, **kw: Any) -> SimOptions:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULT = SimOptions()


class LayerContext(NamedTuple):
    """What a row pruner may compare against: the layer in the original model (W0) and per-row sensitivities."""

    W0: Any = None
    lam: Any = None


class Layers(NamedTuple):
    """The model a model-scope kernel (block removal) receives: every layer's W, H, original W0 and λ."""

    W: Any
    H: Any
    W0: Any
    lam: Any


# -- KernelState as a pytree ----------------------------------------------------------------------------------------
def _flatten(s: KernelState):
    return (s.pruned, s.grid, s.moved, s.kept), s.offgrid


def _unflatten(offgrid, children):
    pruned, grid, moved, kept = children
    return KernelState(pruned=pruned, grid=grid, offgrid=offgrid, moved=moved, kept=kept)


jax.tree_util.register_pytree_node(KernelState, _flatten, _unflatten)


def initial_state(shape, offgrid: str) -> KernelState:
    """Nothing pruned, no grid yet; ``shape``: (..., out, in) (leading axes: layers)."""
    lead = shape[:-2]
    return KernelState(pruned=jnp.zeros(shape, bool), grid=None, offgrid=offgrid,
                       moved=jnp.zeros(lead, jnp.int64), kept=jnp.zeros(lead, jnp.int64))


# -- kernels --------------------------------------------------------------------------------------------------------
def _keep(state: KernelState, W):
    return jnp.ones(W.shape, bool) if state.pruned is None else ~state.pruned


def _refuse(spec, what: str):
    return PihError(f"structure={spec.structure!r}: the simulation's {spec.criterion} kernel supports {what}")


def _row_key(key):
    """A row ranking's key: the key itself, or the priorities of each row's first weight."""
    return key[:, 0] if mech.is_priorities(key) else key


def _rows(spec, W, stats, state, key, ratio, options, ctx, criterion):
    ctx = ctx or LayerContext()
    W0 = W if ctx.W0 is None else ctx.W0
    Wn, k = mech.prune_rows(W, stats.H, ratio, _row_key(key), criterion, W0, ctx.lam, options.reference,
                            _keep(state, W))
    return Wn, state.replace(pruned=~k)


def _scored(criterion: str):
    def kernel(spec, W, stats, state, key, setting, *, options=DEFAULT, ctx=None):
        """Magnitude (|W|, per tensor) or Wanda (|W_ij|·||X_j||, per row): unstructured, N:M; magnitude also
        removes rows (||w_r||²)."""
        keep = _keep(state, W)
        H = stats.norm2 if (criterion == "wanda" and stats.norm2 is not None) else stats.H
        if spec.nm is not None:
            Wn, k = mech.prune_nm(W, H, key, spec.nm[0], spec.nm[1], criterion, keep)
        elif spec.structure == "unstructured":
            per = options.per or ("row" if criterion == "wanda" else "tensor")
            Wn, k = mech.prune_unstructured(W, H, setting, key, criterion, per, keep)
        elif spec.structure == "row" and criterion == "magnitude":
            return _rows(spec, W, stats, state, key, setting, options, ctx, "magnitude")
        else:
            raise _refuse(spec, "unstructured and N:M" + (" and row" if criterion == "magnitude" else ""))
        return Wn, state.replace(pruned=~k)

    kernel.__name__ = f"{criterion}_kernel"
    return kernel


magnitude_kernel = _scored("magnitude")
wanda_kernel = _scored("wanda")


def loss_rows_kernel(spec, W, stats, state, key, setting, *, options=DEFAULT, ctx=None):
    """Row removal by the output error a row's removal causes, w_r H w_rᵀ (relative to φ with reference "phi")."""
    if spec.structure != "row":
        raise _refuse(spec, "row (and block, at model scope)")
    return _rows(spec, W, stats, state, key, setting, options, ctx, "loss")


def _offgrid(spec, Wn, keep, state: KernelState) -> tuple[Any, KernelState]:
    """The off-grid policy after an updating pruner: count what moved, then keep / requantize / refuse."""
    st = state.replace(pruned=~keep)
    if state.grid is None:
        return Wn, st
    if state.offgrid == "forbid":
        raise bad("offgrid", "forbid", f"{spec.criterion} after quantization moves kept weights off the grid")
    st = st.replace(moved=jnp.sum(state.grid.off_grid(Wn) & keep), kept=jnp.sum(keep))
    if state.offgrid == "requantize":
        Wn = state.grid.snap(Wn, keep)
    return Wn, st


def sparsegpt_kernel(spec, W, stats, state, key, setting, *, options=DEFAULT, ctx=None):
    """SparseGPT: the mask per block of ``blocksize`` columns from w²/[H⁻¹]_jj² (N:M per group), OBS update of
    the kept weights; after a quantizer, the off-grid policy of ``state``."""
    if spec.structure != "unstructured" and spec.nm is None:
        raise _refuse(spec, "unstructured and N:M")
    Wn, k = mech.obs_sweep(W, stats.H, key, setting, prune="nm" if spec.nm else "unstructured", nm=spec.nm,
                           keep=_keep(state, W), blocksize=options.blocksize, percdamp=options.percdamp)
    return _offgrid(spec, Wn, k, state)


def _quant_dict(q) -> dict:
    return {"group": q.group, "symmetric": q.symmetric, "scale": q.scale,
            "rounding": getattr(q, "rounding", "nearest"), "grid": q.grid}


def _quantized(W, Q, grid: mech.QGrid, touched, state: KernelState):
    """A quantizer's result where it acted (``touched``: False for a layer mixed precision leaves alone); the
    grid where it acted, the earlier one elsewhere."""
    grid = grid._replace(valid=grid.valid & touched)
    if state.grid is not None:
        grid = jax.tree_util.tree_map(lambda new, old: jnp.where(touched, new, old), grid, state.grid)
    return jnp.where(touched, Q, W), state.replace(grid=grid)


def _bits(setting):
    """(bits to run, whether the layer is quantized at all): a bit width of 0 leaves a layer untouched."""
    b = jnp.asarray(setting, jnp.float64)
    return jnp.where(b > 0, b, 2.0), b > 0


def rtn_kernel(spec, W, stats, state, key, setting, *, options=DEFAULT, ctx=None):
    """Round to nearest (or stochastic / biased rounding) on the spec's grid, one scale per group; the mask kept."""
    b, touched = _bits(setting)
    q = _quant_dict(spec)
    Q, grid = mech.quantize_rtn(W, b, key, q["group"], q["symmetric"], q["scale"], q["rounding"], _keep(state, W),
                                q["grid"], with_grid=True)
    return _quantized(W, Q, grid, touched, state)


def gptq_kernel(spec, W, stats, state, key, setting, *, options=DEFAULT, ctx=None):
    """GPTQ: column-wise error feedback (OBS) with the mask kept exactly."""
    b, touched = _bits(setting)
    Q, _, grid = mech.obs_sweep(W, stats.H, key, 0.0, b, quant=_quant_dict(spec), keep=_keep(state, W),
                                blocksize=options.blocksize, percdamp=options.percdamp, act_order=options.act_order,
                                with_grid=True)
    return _quantized(W, Q, grid, touched, state)


def sparsegpt_joint_kernel(spec, W, stats, state, key, setting, *, options=DEFAULT, ctx=None):
    """SparseGPT's joint mode (``spec``: :class:`pih.methods.Joint`, ``setting``: (ratio, bits)): each block's
    mask, then every kept column quantized and its error fed forward, in one sweep."""
    p = spec.prune
    if p.structure != "unstructured" and p.nm is None:
        raise _refuse(p, "unstructured and N:M in the joint mode")
    ratio, bits = setting[0], setting[1]
    Wn, k, grid = mech.obs_sweep(W, stats.H, key, ratio, bits, prune="nm" if p.nm else "unstructured", nm=p.nm,
                                 quant=_quant_dict(spec.quant), keep=_keep(state, W), blocksize=options.blocksize,
                                 percdamp=options.percdamp, with_grid=True)
    return Wn, state.replace(pruned=~k, grid=grid)


def remove_blocks_kernel(spec, model: Layers, stats, state, key, setting, *, options=DEFAULT, ctx=None):
    """Block (layer) removal at model scope: the layers whose rows' removal scores (magnitude: ||w_r||²; loss:
    w_r H w_rᵀ, relative to φ with reference "phi", weighted by λ) sum lowest are removed."""
    crit = "magnitude" if spec.criterion == "magnitude" else "loss"
    per_row = jax.vmap(lambda w, h, w0, lm: mech.row_scores(w, h, crit, w0, lm, options.reference))(
        model.W, model.H, model.W0, model.lam)
    keep = _keep(state, model.W)
    score = jnp.where(keep.any(axis=(1, 2)), per_row.sum(axis=1), -jnp.inf)
    k = key[:, 0, 0] if mech.is_priorities(key) else key
    kl = mech.ranks(score, k) >= mech.n_pruned(setting, score.size)
    newkeep = keep & kl[:, None, None]
    return model._replace(W=model.W * newkeep), state.replace(pruned=~newkeep)


BUILTIN = (  # (method name, kind, scope, kernel); the joint kernel is registered by its pruner's name
    ("magnitude", "prune", "layer", magnitude_kernel),
    ("wanda", "prune", "layer", wanda_kernel),
    ("sparsegpt", "prune", "layer", sparsegpt_kernel),
    ("loss", "prune", "layer", loss_rows_kernel),
    ("loss", "prune", "model", remove_blocks_kernel),
    ("magnitude", "prune", "model", remove_blocks_kernel),
    ("none", "quantize", "layer", rtn_kernel),
    ("gptq", "quantize", "layer", gptq_kernel),
)


registry.register_builtins("sim", BUILTIN, {"sparsegpt": sparsegpt_joint_kernel})
