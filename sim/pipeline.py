"""Pipelines of compression stages on a model, per-unit errors, owner maps, both orders of a pair, sweeps.

A *stage* is the static part of a method (what code runs); its numeric setting (pruning ratio, bit width, or
one bit width per layer) is a traced parameter, so one jitted function serves a whole grid and ``jax.vmap``
runs settings and seeds side by side. ``stage_from_spec`` maps the core's specs (``pih.Prune``,
``pih.Quantize``, ``pih.MixedPrecision``) onto stages; a few simulation-only options (the pruner's reference
model, biased rounding, the policy for weights a pruner's update moves off the quantization grid) are fields
of the stage.

Order is data: a pipeline is a tuple of stages in application order, ``(P, Q)`` is Q∘P.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pih.errors import bad
from pih.methods import MixedPrecision, Prune, Quantize
from pih.validate import check_spec

from . import mechanisms as mech
from .tensors import Model

P_ID, Q_ID = 0, 1  # method indices in owner maps of a (pruning, quantization) pair


@dataclass(frozen=True)
class PruneStage:
    """Static part of a pruning method.

    criterion: magnitude | wanda | sparsegpt | loss. structure: unstructured | row | block (whole layers) | nm.
    per: ranking scope for unstructured magnitude/Wanda ("tensor" or "row"; Wanda's own choice is "row").
    reference: for row/block removal with criterion loss: "seen" (output of the model the pruner is given)
    or "phi" (marginal degradation relative to the original model: A2's well-designed pruner).
    after_quant: what happens to weights a SparseGPT update moves off an earlier quantizer's grid:
    "keep" (left off-grid), "requantize" (the earlier quantizer is applied again, round to nearest, mask kept)
    or "mask_only" (SparseGPT's mask, no update).
    """

    criterion: str = "magnitude"
    structure: str = "unstructured"
    nm: tuple[int, int] | None = None
    per: str = "tensor"
    reference: str = "seen"
    after_quant: str = "keep"
    blocksize: int = 128
    damp: float = 0.01
    kind = "prune"
    n_params = 1

    def __post_init__(self):
        if self.criterion not in ("magnitude", "wanda", "sparsegpt", "loss"):
            raise bad("criterion", self.criterion, "must be magnitude, wanda, sparsegpt or loss")
        if self.structure not in ("unstructured", "row", "block", "nm"):
            raise bad("structure", self.structure, "must be unstructured, row, block or nm")
        if self.structure == "nm" and self.nm is None:
            raise bad("nm", self.nm, "structure 'nm' needs nm=(N, M)")
        if self.per not in ("tensor", "row"):
            raise bad("per", self.per, "must be tensor or row")
        if self.reference not in ("seen", "phi"):
            raise bad("reference", self.reference, "must be seen or phi")
        if self.after_quant not in ("keep", "requantize", "mask_only"):
            raise bad("after_quant", self.after_quant, "must be keep, requantize or mask_only")


@dataclass(frozen=True)
class QuantStage:
    """Static part of a quantizer. group: "channel" | "tensor" | int; update: none | gptq;
    rounding: nearest | stochastic | down (biased; for assumption variants)."""

    group: int | str = "channel"
    symmetric: bool = True
    scale: str = "absmax"
    update: str = "none"
    rounding: str = "nearest"
    blocksize: int = 128
    damp: float = 0.01
    kind = "quantize"
    n_params = 1

    def __post_init__(self):
        if not (self.group in ("channel", "tensor") or (isinstance(self.group, int) and self.group > 0)):
            raise bad("group", self.group, "must be 'channel', 'tensor' or a positive integer")
        if self.scale not in ("absmax", "mse"):
            raise bad("scale", self.scale, "must be absmax or mse")
        if self.update not in ("none", "gptq"):
            raise bad("update", self.update, "must be none or gptq")
        if self.rounding not in ("nearest", "stochastic", "down"):
            raise bad("rounding", self.rounding, "must be nearest, stochastic or down")

    def as_dict(self):
        return {"group": self.group, "symmetric": self.symmetric, "scale": self.scale, "rounding": self.rounding}


@dataclass(frozen=True)
class JointStage:
    """SparseGPT's joint mode: prune and quantize in one OBS sweep (params: ratio, bits)."""

    prune: PruneStage
    quant: QuantStage
    kind = "joint"
    n_params = 2


@dataclass(frozen=True)
class MixedStage:
    """Mixed precision: one bit width per layer (param vector of length L; 0 leaves a layer untouched)."""

    quant: QuantStage
    kind = "mixed"
    n_params = -1  # one per layer


def stage_from_spec(spec) -> tuple[object, object]:
    """(stage, setting) for a core spec. Prune → (PruneStage, ratio); Quantize → (QuantStage, bits);
    MixedPrecision → (MixedStage, bits tuple). The spec's rotation, if any, is reported by ``spec_rotation``."""
    if isinstance(spec, Prune):
        nm = spec.nm
        structure = "nm" if nm else spec.structure
        if structure == "head":
            raise bad("structure", spec.structure, "the simulation has no attention heads; use row or block")
        per = "row" if spec.criterion == "wanda" else "tensor"
        return PruneStage(spec.criterion, structure, nm, per), spec.ratio
    check_spec(spec)  # the rules every backend shares (pih.validate)
    if isinstance(spec, Quantize):
        return QuantStage(spec.group, spec.symmetric, spec.scale, spec.update, spec.rounding), spec.bits
    if isinstance(spec, MixedPrecision):
        q = QuantStage(spec.group, spec.symmetric, spec.scale, spec.update)
        return MixedStage(q), tuple(spec.bits)
    raise bad("spec", spec, "expected pih.Prune, pih.Quantize or pih.MixedPrecision")


def spec_rotation(specs) -> str | None:
    rots = {getattr(s, "rotation", None) for s in specs} - {None}
    return rots.pop() if rots else None


# --------------------------------------------------------------------------------------------- one stage


def _layer_prune(st: PruneStage, W, H, keep, W0, lam, ratio, key, last_quant: QuantStage | None, bits_prev):
    """Apply a pruning stage to one layer."""
    if st.structure == "row":
        crit = "magnitude" if st.criterion == "magnitude" else "loss"
        return mech.prune_rows(W, H, ratio, key, crit, W0, lam, st.reference, keep)
    if st.criterion == "sparsegpt":
        if st.after_quant == "mask_only" and last_quant is not None:
            _, k = mech.obs_sweep(W, H, key, ratio, prune="nm" if st.nm else "unstructured", nm=st.nm,
                                  keep=keep, blocksize=st.blocksize, damp=st.damp)
            return W * k, k
        Wn, k = mech.obs_sweep(W, H, key, ratio, prune="nm" if st.nm else "unstructured", nm=st.nm, keep=keep,
                               blocksize=st.blocksize, damp=st.damp)
        if st.after_quant == "requantize" and last_quant is not None:
            Wn = mech.quantize_rtn(Wn, bits_prev, key, last_quant.group, last_quant.symmetric, last_quant.scale,
                                   "nearest", k)
        return Wn, k
    if st.criterion == "loss":
        raise bad("criterion", "loss", "the loss criterion is for row or block removal")
    if st.structure == "nm":
        return mech.prune_nm(W, H, key, st.nm[0], st.nm[1], st.criterion, keep)
    return mech.prune_unstructured(W, H, ratio, key, st.criterion, st.per, keep)


def _layer_quant(st: QuantStage, W, H, keep, bits, key):
    if st.update == "gptq":
        Wq, _ = mech.obs_sweep(W, H, key, 0.0, bits, quant=st.as_dict(), keep=keep, blocksize=st.blocksize,
                               damp=st.damp)
        return Wq
    return mech.quantize_rtn(W, bits, key, st.group, st.symmetric, st.scale, st.rounding, keep)


def _layer_joint(st: JointStage, W, H, keep, ratio, bits, key):
    p = st.prune
    if p.criterion != "sparsegpt" or p.structure not in ("unstructured", "nm"):
        raise bad("joint", p, "the joint mode is SparseGPT's (criterion sparsegpt, unstructured or N:M)")
    return mech.obs_sweep(W, H, key, ratio, bits, prune="nm" if p.nm else "unstructured", nm=p.nm,
                          quant=st.quant.as_dict(), keep=keep, blocksize=p.blocksize, damp=p.damp)


class RunOut(NamedTuple):
    """Result of a pipeline on a model (all arrays over layers L, rows o, inputs i)."""

    W: jax.Array  # compressed weights, original basis (L, o, i)
    Wact: jax.Array  # compressed weights in the basis the methods acted in (rotated with rotation scope model)
    keep: jax.Array  # final sparsity mask in the basis the methods acted in (L, o, i)
    owners: jax.Array  # owner per weight: method index, -1 untouched (L, o, i)
    weight_err: jax.Array  # per row ||w - w'||² (L, o)
    output_err: jax.Array  # per row ||(w - w')X||² (L, o)
    free_zeros: jax.Array  # weights a pruning stage removed that were already exactly zero


def _row_output_err(D, X, H=None):
    """Per row ||d X||² for D (L, o, i), X (L, i, n): through X when n < i, else through H = X Xᵀ."""
    if X.shape[2] < X.shape[1]:
        return jnp.sum((D @ X) ** 2, axis=2)
    H = X @ jnp.swapaxes(X, 1, 2) if H is None else H
    return jnp.sum((D @ H) * D, axis=2)


def _row_errs(W0, Wn, X, W0X, H=None):
    """(per-row ||w − w'||², per-row ||(w − w')X||²). (Computing the output error as ||wX − w'X||² from a
    cached wX measured slower: the difference is fused into one pass either way.)"""
    D = W0 - Wn
    return jnp.sum(D * D, axis=2), _row_output_err(D, X, H)


def _split_params(stages, params, n_layers):
    out, pos = [], 0
    for st in stages:
        n = n_layers if st.n_params == -1 else st.n_params
        out.append(params[pos: pos + n])
        pos += n
    return out


def n_params(stages, n_layers: int) -> int:
    return sum(n_layers if st.n_params == -1 else st.n_params for st in stages)


def run_pipeline(model: Model, stages: tuple, params, key, method_ids: tuple | None = None, lam=None,
                 rotation: str | None = None, rotation_scope: str = "model") -> RunOut:
    """Apply ``stages`` in order to every layer of ``model`` and measure the result against it.

    params: one array per stage (ratio; bits; (ratio, bits) for joint; one bit width per layer for mixed), or
    the same concatenated into one flat vector. Pass a tuple when vmapping over settings: a concatenated vector
    would batch every stage over every setting.
    method_ids: the owner index of each stage (joint: a (prune, quant) pair); default
    P_ID for pruning, Q_ID for quantization. lam: per-row sensitivities (L, o) used by loss/reference pruners.
    rotation="hadamard": with scope "model" the whole pipeline acts on W R and Rᵀ X (a function-preserving
    change of basis, as QuaRot fuses it); with scope "quantizer" each quantizer rotates, quantizes and rotates
    back, and the existing mask is re-applied in the original basis.
    """
    W0, X = model.W, model.X
    L, o, i = W0.shape
    if rotation not in (None, "hadamard"):
        raise bad("rotation", rotation, "must be None or 'hadamard'")
    if rotation_scope not in ("model", "quantizer"):
        raise bad("rotation_scope", rotation_scope, "must be model or quantizer")
    R = mech.hadamard(i) if rotation else None
    if R is not None and rotation_scope == "model":
        W0r, Xr = W0 @ R, jnp.swapaxes(R, 0, 1)[None] @ X
    else:
        W0r, Xr = W0, X
    H = Xr @ jnp.swapaxes(Xr, 1, 2)
    if isinstance(params, (tuple, list)):  # one array per stage (keeps vmapped settings apart)
        per_stage = [jnp.atleast_1d(jnp.asarray(p, dtype=jnp.float64)) for p in params]
    else:
        per_stage = _split_params(stages, jnp.asarray(params, dtype=jnp.float64), L)
    if method_ids is None:
        method_ids = tuple((P_ID, Q_ID) if s.kind == "joint" else (P_ID if s.kind == "prune" else Q_ID)
                           for s in stages)
    lam = jnp.ones((L, o)) if lam is None else jnp.asarray(lam)
    W = W0r
    keep = jnp.ones(W.shape, bool)
    owners = jnp.full(W.shape, -1, jnp.int8)
    free = jnp.zeros((), jnp.int64)
    last_q, last_bits = None, None
    key = jnp.asarray(key)
    keys = key if key.ndim == 2 else jax.random.split(key, len(stages))
    if keys.shape[0] != len(stages):
        raise bad("key", f"{keys.shape[0]} keys", f"one key per stage ({len(stages)}) or a single key")
    for si, (st, p, k) in enumerate(zip(stages, per_stage, keys, strict=True)):
        lk = jax.random.split(k, L)
        mid = method_ids[si]
        if st.kind == "prune" and st.structure == "block":
            crit = "magnitude" if st.criterion == "magnitude" else "loss"
            per_row = jax.vmap(lambda w, h, w0, lm, _c=crit, _r=st.reference: mech.row_scores(w, h, _c, w0, lm, _r))(
                W, H, W0r, lam)
            alive = keep.any(axis=(1, 2))
            score = jnp.where(alive, per_row.sum(axis=1), -jnp.inf)
            kl = mech.ranks(score, k) >= mech.n_pruned(p[0], L)
            newkeep = keep & kl[:, None, None]
            Wn = W * newkeep
        elif st.kind == "prune":
            Wn, newkeep = jax.vmap(
                lambda w, h, kp, w0, lm, kk, _st=st, _p=p, _q=last_q, _b=last_bits: _layer_prune(
                    _st, w, h, kp, w0, lm, _p[0], kk, _q, _b))(W, H, keep, W0r, lam, lk)
        elif st.kind in ("quantize", "mixed"):
            q = st if st.kind == "quantize" else st.quant
            bits = jnp.broadcast_to(p[0], (L,)) if st.kind == "quantize" else p

            def one(w, h, kp, b, kk, _q=q):
                if R is not None and rotation_scope == "quantizer":
                    return _layer_quant(_q, w @ R, R.T @ h @ R, None, b, kk) @ R.T * kp
                return _layer_quant(_q, w, h, kp, b, kk)

            Wq = jax.vmap(one)(W, H, keep, jnp.maximum(bits, 2.0), lk)
            touched = bits > 0
            Wn = jnp.where(touched[:, None, None], Wq, W)
            owners = jnp.where(touched[:, None, None] & keep, jnp.int8(mid), owners)
            W = Wn
            last_q, last_bits = q, p[0]
            continue
        elif st.kind == "joint":
            Wn, newkeep = jax.vmap(
                lambda w, h, kp, kk, _st=st, _p=p: _layer_joint(_st, w, h, kp, _p[0], _p[1], kk))(W, H, keep, lk)
            pruned_now = keep & ~newkeep
            owners = jnp.where(pruned_now, jnp.int8(mid[0]), jnp.where(newkeep, jnp.int8(mid[1]), owners))
            W, keep = Wn, newkeep
            continue
        else:  # pragma: no cover
            raise bad("stage", st, "unknown stage kind")
        pruned_now = keep & ~newkeep
        free = free + jnp.sum(pruned_now & (W == 0))
        owners = jnp.where(pruned_now, jnp.int8(mid), owners)
        W, keep = Wn, newkeep
    we, eo = _row_errs(W0r, W, Xr, W0r @ Xr, H)
    Wout = W @ R.T if (R is not None and rotation_scope == "model") else W
    return RunOut(Wout, W, keep, owners, we, eo, free)


# --------------------------------------------------------------------------------------------- a pair


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


def run_pair(model: Model, pstage: PruneStage, qstage, p, b, key, lam=None, rotation=None,
             rotation_scope="model") -> PairResult:
    """Run P alone, Q alone, P→Q and Q→P with shared keys (the same tie-breaks in both orders)."""
    kp, kq = jax.random.split(key)
    L = model.W.shape[0]
    qb = jnp.broadcast_to(jnp.asarray(b, jnp.float64), (L,)) if qstage.kind == "mixed" else jnp.atleast_1d(b)
    pp = jnp.atleast_1d(jnp.asarray(p, jnp.float64))

    def pipeline(stages, params, skeys):  # one key per method, the same in every order
        return run_pipeline(model, stages, params, jnp.stack(skeys), lam=lam, rotation=rotation,
                            rotation_scope=rotation_scope)

    P_alone = pipeline((pstage,), (pp,), (kp,))
    Q_alone = pipeline((qstage,), (qb,), (kq,))
    PF = pipeline((pstage, qstage), (pp, qb), (kp, kq))
    QF = pipeline((qstage, pstage), (qb, pp), (kq, kp))
    W0, X = model.W, model.X
    if rotation is not None and rotation_scope == "model":
        R = mech.hadamard(W0.shape[2])
        W0, X = W0 @ R, R.T[None] @ X
    rem_w = jnp.sum(W0 * W0, axis=2)
    W0X = W0 @ X
    rem_o = jnp.sum(W0X**2, axis=2) if X.shape[2] < X.shape[1] else _row_output_err(W0, X)

    def disjoint(out):
        return _row_errs(W0, jnp.where(out.keep, Q_alone.Wact, 0.0), X, W0X)

    pdw, pdo = disjoint(PF)
    qdw, qdo = disjoint(QF)
    return PairResult(P_alone.weight_err, P_alone.output_err, Q_alone.weight_err, Q_alone.output_err,
                      PF.weight_err, PF.output_err, QF.weight_err, QF.output_err, rem_w, rem_o,
                      _row_owner(PF), _row_owner(QF), PF.free_zeros, QF.free_zeros, rem_o, pdw, pdo, qdw, qdo)


run_pipeline_jit = jax.jit(run_pipeline, static_argnames=("stages", "method_ids", "rotation", "rotation_scope"))
run_pair_jit = jax.jit(run_pair, static_argnames=("pstage", "qstage", "rotation", "rotation_scope"))


def with_reference(stage: PruneStage, reference: str) -> PruneStage:
    return dataclasses.replace(stage, reference=reference)


def as_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)
