"""Pipelines of core specs on a model: one executor loop, per-unit errors, owner maps, both orders of a pair.

A pipeline is a tuple of core specs (``pih.Prune``, ``pih.Quantize``, ``pih.MixedPrecision``, ``pih.Joint``) in
application order, ``(P, Q)`` is Q∘P; ``settings`` holds each stage's numeric setting (the pruning ratio, the bit
width, one bit width per layer — 0 leaves a layer untouched —, or (ratio, bits) for a joint stage) as traced
values, so one compiled function serves a whole grid and ``jax.vmap`` runs settings and seeds side by side. The
static part of a stage is its spec with that numeric field replaced by a canonical value
(:func:`stage_from_spec`), which is what the compiled functions are keyed on. Simulation-only settings are one
:class:`sim.kernels.SimOptions`.

Every stage runs through :func:`execute`: the registered ``"sim"`` kernel of its method
(:func:`pih.registry.kernel_for`), applied to each layer, with the mask, the grid and the off-grid policy in a
:class:`pih.registry.KernelState`. :func:`run_pipeline` (independent layers, vmapped), :func:`run_pair` (four
pipelines given as data), :mod:`sim.chain` (layers in sequence, calibrated on the compressed prefix) and
:mod:`sim.predict` all run that one loop.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pih import registry
from pih.errors import bad
from pih.methods import Joint, MixedPrecision, Prune, Quantize
from pih.registry import Stats
from pih.validate import check_spec

from . import mechanisms as mech
from .kernels import DEFAULT, LayerContext, Layers, SimOptions, initial_state
from .tensors import Model

P_ID, Q_ID = 0, 1  # method indices in owner maps of a (pruning, quantization) pair
CANONICAL_BITS = 16  # the bit width a stage's static spec carries (its real one is a traced setting)


def canonical(spec):
    """The static part of a stage: ``spec`` with its numeric setting replaced by a fixed value (an N:M pruner
    keeps the ratio its structure implies)."""
    if isinstance(spec, Prune):
        return spec if spec.nm else spec.replace(ratio=0.0)
    if isinstance(spec, Quantize):
        return spec.replace(bits=CANONICAL_BITS)
    if isinstance(spec, MixedPrecision):
        return spec.replace(bits=(CANONICAL_BITS,))
    if isinstance(spec, Joint):
        return Joint(canonical(spec.prune), canonical(spec.quant))
    raise bad("spec", spec, "expected pih.Prune, pih.Quantize, pih.MixedPrecision or pih.Joint")


def setting_of(spec):
    """A spec's numeric setting: ratio, bits, the bits tuple, or (ratio, bits)."""
    if isinstance(spec, Prune):
        return spec.ratio
    if isinstance(spec, Joint):
        return (spec.prune.ratio, spec.quant.bits)
    return spec.bits


def stage_from_spec(spec) -> tuple[object, object]:
    """(static stage, setting) for a core spec, after the checks every backend shares (``pih.validate``) and a
    clear error when the simulation has no kernel for it."""
    if isinstance(spec, Prune) and spec.structure == "head":
        raise bad("structure", spec.structure, "the simulation has no attention heads; use row or block")
    if isinstance(spec, Joint):
        check_spec(spec.quant)
    else:
        check_spec(spec)
    stage = canonical(spec)
    registry.kernel_for(stage, "sim")
    return stage, setting_of(spec)


def spec_rotation(specs) -> str | None:
    rots = {getattr(s.quant if isinstance(s, Joint) else s, "rotation", None) for s in specs} - {None}
    return rots.pop() if rots else None


# --------------------------------------------------------------------------------------------- the one loop


def _n_settings(spec, n_layers: int) -> int:
    return {"mixed": n_layers, "joint": 2}.get(spec.kind, 1)


def stage_settings(pipeline, settings, n_layers: int) -> list:
    """One array per stage: a scalar (ratio or bits), (L,) bit widths (mixed), (2,) (joint). ``settings``: None
    (the specs' own), one value per stage, or the same concatenated into one flat vector."""
    if settings is None:
        settings = [setting_of(s) for s in pipeline]
    if not isinstance(settings, (tuple, list)):  # a flat vector
        flat = jnp.asarray(settings, jnp.float64).reshape(-1)
        sizes = [_n_settings(s, n_layers) for s in pipeline]
        if flat.size != sum(sizes):
            raise bad("settings", f"{flat.size} values", f"the pipeline takes {sum(sizes)}")
        settings = jnp.split(flat, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [flat]
    if len(settings) != len(pipeline):
        raise bad("settings", f"{len(settings)} settings", f"one per stage ({len(pipeline)})")
    out = []
    for spec, v in zip(pipeline, settings, strict=True):
        v = jnp.asarray(v, jnp.float64)
        if spec.kind == "mixed":
            out.append(jnp.broadcast_to(v, (n_layers,)))
        elif spec.kind == "joint":
            out.append(jnp.reshape(v, (2,)))
        else:
            out.append(jnp.atleast_1d(v)[0])
    return out


def _account(spec, mid, before, after, W_before, owners, free, setting):
    """Owner map and free zeros after one stage: a pruner owns what it removed (free zeros: removed weights that
    were already exactly zero), a quantizer the kept weights of the layers it quantized, a joint stage both."""
    if spec.kind == "prune":
        now = after.pruned & ~before.pruned
        return jnp.where(now, jnp.int8(mid), owners), free + jnp.sum(now & (W_before == 0))
    if spec.kind == "joint":
        now = after.pruned & ~before.pruned
        return jnp.where(now, jnp.int8(mid[0]), jnp.where(~after.pruned, jnp.int8(mid[1]), owners)), free
    touched = jnp.broadcast_to(setting > 0, owners.shape[:1])
    owners = jnp.where(touched[:, None, None] & ~after.pruned, jnp.int8(mid), owners)
    return owners, free


def check_options(pipeline, options: SimOptions) -> None:
    """What no kernel can see on its own: an off-grid policy that needs a grid in the weights' basis."""
    rotated = spec_rotation(pipeline) is not None and options.rotation_scope == "quantizer"
    if rotated and options.offgrid == "requantize":
        seen_q = False
        for s in pipeline:
            if s.kind in ("quantize", "mixed", "joint"):
                seen_q = True
            elif seen_q and registry.method_of(s).updates_kept:
                raise bad("offgrid", "requantize", f"{s.criterion} after a quantizer that rotates inside itself "
                          "(rotation_scope='quantizer') has no grid in the weights' basis to requantize onto")


def execute(pipeline, settings, keys, W, apply, method_ids, offgrid: str):
    """The executor: for each stage, its registered "sim" kernel applied to every layer by ``apply(spec, kernel,
    W, state, key, setting) -> (W, state)``; returns (W, state, owners, free zeros, weights moved off a grid,
    kept weights counted with them)."""
    state = initial_state(W.shape, offgrid)
    owners = jnp.full(W.shape, -1, jnp.int8)
    free = moved = kept = jnp.zeros((), jnp.int64)
    for spec, setting, key, mid in zip(pipeline, settings, keys, method_ids, strict=True):
        kernel = registry.kernel_for(spec, "sim")
        before = state.replace(moved=jnp.zeros_like(state.moved), kept=jnp.zeros_like(state.kept))
        W_new, state = apply(spec, kernel, W, before, key, setting)
        owners, free = _account(spec, mid, before, state, W, owners, free, setting)
        moved, kept = moved + jnp.sum(state.moved), kept + jnp.sum(state.kept)
        W = W_new
    return W, state, owners, free, moved, kept


def independent_layers(H, W0, lam, options: SimOptions, R=None):
    """``apply`` for a model of independent layers (every layer on its own dense inputs): the kernel vmapped over
    layers; model-scope kernels (block removal) see every layer; a quantizer of rotation scope "quantizer"
    rotates, quantizes and rotates back, and the mask is re-applied in the original basis."""

    def apply(spec, kernel, W, state, key, setting):
        if registry.scope_of(spec) == "model":
            out, st = kernel(spec, Layers(W, H, W0, lam), None, state, key, setting, options=options)
            return out.W, st
        L = W.shape[0]
        lkeys = key if mech.is_priorities(key) else jax.random.split(key, L)
        rotate = R is not None and options.rotation_scope == "quantizer" and spec.kind in ("quantize", "mixed")

        def one(w, h, st, k, s, w0, lm):
            if rotate:
                inner = initial_state(w.shape, st.offgrid)
                Wq, _ = kernel(spec, w @ R, Stats(H=R.T @ h @ R, norm2=jnp.diag(R.T @ h @ R)), inner, k, s,
                               options=options)
                no_grid = mech.make_grid(1.0, 0.0, 2.0, True, w.shape, valid=False)
                return Wq @ R.T * ~st.pruned, st.replace(grid=no_grid if st.grid is None else
                                                        st.grid._replace(valid=jnp.zeros((), bool)))
            return kernel(spec, w, Stats(H=h, norm2=jnp.diag(h)), st, k, s, options=options, ctx=LayerContext(w0, lm))

        s_axis = 0 if spec.kind == "mixed" else None
        return jax.vmap(one, in_axes=(0, 0, 0, 0, s_axis, 0, 0))(W, H, state, lkeys, setting, W0, lam)

    return apply


class RunOut(NamedTuple):
    """Result of a pipeline on a model (all arrays over layers L, rows o, inputs i)."""

    W: jax.Array  # compressed weights, original basis (L, o, i)
    Wact: jax.Array  # compressed weights in the basis the methods acted in (rotated with rotation scope model)
    keep: jax.Array  # final sparsity mask in the basis the methods acted in (L, o, i)
    owners: jax.Array  # owner per weight: method index, -1 untouched (L, o, i)
    weight_err: jax.Array  # per row ||w - w'||² (L, o)
    output_err: jax.Array  # per row ||(w - w')X||² (L, o)
    free_zeros: jax.Array  # weights a pruning stage removed that were already exactly zero
    offgrid_moved: jax.Array  # kept weights an updating pruner moved off an earlier grid (before the policy)
    offgrid_kept: jax.Array  # the kept weights they were counted among


def _row_output_err(D, X, H=None):
    """Per row ||d X||² for D (L, o, i), X (L, i, n): through X when n < i, else through H = X Xᵀ."""
    if X.shape[2] < X.shape[1]:
        return jnp.sum((D @ X) ** 2, axis=2)
    H = X @ jnp.swapaxes(X, 1, 2) if H is None else H
    return jnp.sum((D @ H) * D, axis=2)


def _row_errs(W0, Wn, X, H=None):
    """(per-row ||w − w'||², per-row ||(w − w')X||²)."""
    D = W0 - Wn
    return jnp.sum(D * D, axis=2), _row_output_err(D, X, H)


def _basis(model: Model, rotation, options: SimOptions):
    """(R or None, W0 and X in the basis the methods act in)."""
    W0, X = model.W, model.X
    R = mech.hadamard(W0.shape[2]) if rotation else None
    if R is not None and options.rotation_scope == "model":
        return R, W0 @ R, jnp.swapaxes(R, 0, 1)[None] @ X
    return R, W0, X


def _stage_keys(key, n: int):
    key = jnp.asarray(key)
    if mech.is_priorities(key):
        return key  # (n_stages, L, o, i) priorities
    keys = key if key.ndim == 2 else jax.random.split(key, n)
    if keys.shape[0] != n:
        raise bad("key", f"{keys.shape[0]} keys", f"one key per stage ({n}) or a single key")
    return keys


def run_pipeline(model: Model, pipeline: tuple, settings=None, key=None, method_ids: tuple | None = None,
                 lam=None, options: SimOptions | None = None, rotation: str | None = None,
                 errors: bool = True) -> RunOut:
    """Apply ``pipeline`` (core specs, in order) to every layer of ``model`` and measure the result against it.

    settings: see :func:`stage_settings` (None: the specs' own). Pass a tuple when vmapping over settings: a
    concatenated vector would batch every stage over every setting. key: one key per stage (stacked), or one key
    split into as many. method_ids: the owner index of each stage (joint: a (prune, quant) pair); default P_ID
    for pruning, Q_ID for quantization. lam: per-row sensitivities (L, o) used by loss/reference pruners. A
    Hadamard rotation (``Quantize.rotation``) acts as ``options.rotation_scope`` says: "model", the whole pipeline
    acts on W R and Rᵀ X (a function-preserving change of basis, as QuaRot fuses it); "quantizer", each quantizer
    rotates, quantizes and rotates back. ``rotation``: the rotation of the experiment when the pipeline's own
    specs do not carry it (:func:`run_pair` gives P alone the basis of its pair). ``errors=False``: leave the
    per-row errors to the caller (None).
    """
    options = DEFAULT if options is None else options
    pipeline = tuple(pipeline)
    check_options(pipeline, options)
    L, o, _ = model.W.shape
    settings = stage_settings(pipeline, settings, L)
    pipeline = tuple(canonical(s) for s in pipeline)
    if method_ids is None:
        method_ids = tuple((P_ID, Q_ID) if s.kind == "joint" else (P_ID if s.kind == "prune" else Q_ID)
                           for s in pipeline)
    R, W0r, Xr = _basis(model, rotation or spec_rotation(pipeline), options)
    H = Xr @ jnp.swapaxes(Xr, 1, 2)
    lam = jnp.ones((L, o)) if lam is None else jnp.asarray(lam)
    keys = _stage_keys(jax.random.PRNGKey(0) if key is None else key, len(pipeline))
    W, state, owners, free, moved, kept = execute(pipeline, settings, keys, W0r,
                                                  independent_layers(H, W0r, lam, options, R), method_ids,
                                                  options.offgrid)
    we, eo = _row_errs(W0r, W, Xr, H) if errors else (None, None)
    Wout = W @ R.T if (R is not None and options.rotation_scope == "model") else W
    return RunOut(Wout, W, ~state.pruned, owners, we, eo, free, moved, kept)


# --------------------------------------------------------------------------------------------- a pair

PAIR_PIPELINES = (("P", (P_ID,)), ("Q", (Q_ID,)), ("PQ", (P_ID, Q_ID)), ("QP", (Q_ID, P_ID)))  # as data


class PairResult(NamedTuple):
    """Pruning P (ratio p) and quantization Q (bits b) on one model: alone and in both orders.

    Row-level arrays (L, o). ``pf`` = P first (Q∘P), ``qf`` = Q first (P∘Q). ``removal_*``: the error P
    causes on a unit when it owns it (the removed original row); ``q_*``: Q alone on φ.
    """

    p_weight: jax.Array
    p_output: jax.Array
    q_weight: jax.Array
    q_output: jax.Array
    pf_weight: jax.Array
    pf_output: jax.Array
    qf_weight: jax.Array
    qf_output: jax.Array
    removal_weight: jax.Array
    removal_output: jax.Array
    pf_row_owner: jax.Array  # per row: P_ID if the whole row is pruned, else Q_ID (or -1)
    qf_row_owner: jax.Array
    pf_free_zeros: jax.Array
    qf_free_zeros: jax.Array
    dense_output: jax.Array  # ||w X||² per row (for relative errors)
    pf_disjoint_weight: jax.Array  # errors of the disjoint reconstruction: each weight as its owner alone
    pf_disjoint_output: jax.Array  # leaves it (pruned: 0; kept: Q alone on φ); Δ = actual − disjoint
    qf_disjoint_weight: jax.Array
    qf_disjoint_output: jax.Array


def _row_owner(out: RunOut):
    """Per row of a (P, Q) pair's result: P_ID where the whole row is pruned, else Q_ID (every kept weight was
    quantized)."""
    return jnp.where(jnp.any(out.keep, axis=2), Q_ID, P_ID).astype(jnp.int8)


def run_pair(model: Model, prune, quant, p, b, key, lam=None, options: SimOptions | None = None) -> PairResult:
    """Run the four pipelines of :data:`PAIR_PIPELINES` (P alone, Q alone, P→Q, Q→P) with shared keys: each
    method has one key, the same in every order, so it draws the same tie-breaks whether it runs first or
    second."""
    options = DEFAULT if options is None else options
    methods = (prune, quant)
    L = model.W.shape[0]
    values = (jnp.asarray(p, jnp.float64),
              jnp.broadcast_to(jnp.asarray(b, jnp.float64), (L,)) if quant.kind == "mixed" else b)
    mkeys = jax.random.split(key)
    rotation = spec_rotation(methods)  # one basis for the four pipelines (P alone included)
    out = {name: run_pipeline(model, tuple(methods[i] for i in ids), tuple(values[i] for i in ids),
                              jnp.stack([mkeys[i] for i in ids]), method_ids=ids, lam=lam, options=options,
                              rotation=rotation, errors=False)
           for name, ids in PAIR_PIPELINES}
    _, W0, X = _basis(model, rotation, options)
    rem_w = jnp.sum(W0 * W0, axis=2)
    rem_o = jnp.sum((W0 @ X) ** 2, axis=2) if X.shape[2] < X.shape[1] else _row_output_err(W0, X)
    P_, Q_, PF, QF = (out[k] for k in ("P", "Q", "PQ", "QP"))
    # the four results and the disjoint reconstructions (each weight as its owner alone leaves it) measured in one
    # batched computation: equal weights give bitwise equal errors (errors computed apart were seen to differ by
    # 1e-15, XLA summing the same product in another order)
    Ws = jnp.stack([P_.Wact, Q_.Wact, PF.Wact, QF.Wact, jnp.where(PF.keep, Q_.Wact, 0.0),
                    jnp.where(QF.keep, Q_.Wact, 0.0)])
    D = W0[None] - Ws
    we = jnp.sum(D * D, axis=3)
    eo = jax.vmap(lambda d: _row_output_err(d, X))(D)
    return PairResult(we[0], eo[0], we[1], eo[1], we[2], eo[2], we[3], eo[3], rem_w, rem_o, _row_owner(PF),
                      _row_owner(QF), PF.free_zeros, QF.free_zeros, rem_o, we[4], eo[4], we[5], eo[5])


run_pipeline_jit = jax.jit(run_pipeline, static_argnames=("pipeline", "method_ids", "options", "rotation",
                                                         "errors"))
run_pair_jit = jax.jit(run_pair, static_argnames=("prune", "quant", "options"))


__all__ = ["P_ID", "PAIR_PIPELINES", "Q_ID", "PairResult", "RunOut", "SimOptions", "canonical",
           "execute", "run_pair", "run_pipeline", "stage_from_spec"]
