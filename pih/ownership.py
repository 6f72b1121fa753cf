"""Units, owners, disjoint selectivity, the Theorem 1 decomposition and interference.

A *unit* is the smallest piece of a model that one method's error can be attributed to. An *owner map* is an
integer array over units: entry u is the index (in a method list) of the method whose error unit u carries in a
compressed model, or -1 when no method touched it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import bad, check_tensor

# Structural levels from fine to coarse. "nm" and "group" are runs of consecutive input weights inside a row.
_LEVELS = ("weight", "nm", "group", "row", "head", "tensor", "block")
_RUN_LEVELS = ("nm", "group")


@dataclass(frozen=True, order=False)
class Granularity:
    """The smallest structural unit a method acts on: a level and, for runs inside a row, their length."""

    level: str
    size: int = 1

    def __post_init__(self) -> None:
        if self.level not in _LEVELS:
            raise bad("level", self.level, f"must be one of {_LEVELS}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise bad("size", self.size, "must be a positive integer")

    def within(self, other: Granularity) -> bool:
        """True when every unit of ``self`` lies inside one unit of ``other`` (t_self ≤ t_other)."""
        a, b = self.level, other.level
        if a == "weight":
            return True
        if a in _RUN_LEVELS and b in _RUN_LEVELS:
            return other.size % self.size == 0  # aligned runs: a run of length s sits in one of length k·s
        if a in _RUN_LEVELS:
            return b not in ("weight",)
        if b in ("weight",) + _RUN_LEVELS:
            return False
        return _LEVELS.index(a) <= _LEVELS.index(b)

    def coarsen(self, other: Granularity) -> Granularity:
        """The coarser of the two (the one the other lies within); ties keep ``self``."""
        return self if other.within(self) else other

    def __str__(self) -> str:
        return f"{self.level}({self.size})" if self.level in _RUN_LEVELS else self.level


def disjoint_selectivity(prune, quant) -> bool:
    """Whether pruning ``prune`` and quantization ``quant`` are disjointly selective: t_Q ≤ t_P.

    Every unit of the final model is then owned by one method: a pruned unit by P, a kept one by Q. When
    pruning is finer (a pruned weight inside a quantization group sharing one scale) the two interfere.
    """
    return quant.granularity().within(prune.granularity())


def _owner_inputs(errors, owners_a, owners_b, sensitivities):
    e = check_tensor("errors", errors).astype(float)
    if e.ndim != 2:
        raise bad("errors", f"array of shape {e.shape}", "expected shape (n_methods, n_units)")
    n_m, n_u = e.shape
    out = []
    for name, o in (("owners_a", owners_a), ("owners_b", owners_b)):
        o = np.asarray(o)
        if o.shape != (n_u,):
            raise bad(name, f"array of shape {o.shape}", f"expected shape ({n_u},) to match errors")
        if not np.issubdtype(o.dtype, np.integer):
            raise bad(name, f"array of dtype {o.dtype}", "owner maps hold integer method indices")
        if o.size and (o.min() < -1 or o.max() >= n_m):
            raise bad(name, f"values in [{o.min()}, {o.max()}]", f"owners must lie in [-1, {n_m - 1}]")
        out.append(o)
    lam = np.ones(n_u) if sensitivities is None else check_tensor("sensitivities", sensitivities).astype(float)
    if lam.shape != (n_u,):
        raise bad("sensitivities", f"array of shape {lam.shape}", f"expected shape ({n_u},)")
    if (lam < 0).any():
        raise bad("sensitivities", f"min {lam.min():g}", "A1 needs non-negative sensitivities")
    return e, out[0], out[1], lam


def owned_errors(errors: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """Per-unit error carried in a model with owner map ``owners`` (0 where untouched)."""
    e = np.asarray(errors, dtype=float)
    o = np.asarray(owners)
    idx = np.arange(o.shape[0])
    return np.where(o >= 0, e[np.clip(o, 0, None), idx], 0.0)


@dataclass(frozen=True)
class T1Decomposition:
    """A(f1→f2) as a sum over the units whose owner differs between the two orders."""

    advantage: float
    changed: np.ndarray  # bool mask over units
    n_changed: int
    terms: np.ndarray  # λ_u (e[b_u, u] − e[a_u, u]) on changed units, 0 elsewhere


def theorem1(errors, owners_a, owners_b, sensitivities=None) -> T1Decomposition:
    """Theorem 1: A(f1→f2) = Σ_{u: a_u ≠ b_u} λ_u (e[b_u, u] − e[a_u, u]).

    errors[m, u]: error method m causes on unit u when applied alone to φ. owners_a: owners in f2∘f1 (f1 applied
    first); owners_b: owners in f1∘f2 (f2 applied first). Units whose owner is the same cancel.
    """
    e, a, b, lam = _owner_inputs(errors, owners_a, owners_b, sensitivities)
    changed = a != b
    terms = np.zeros(e.shape[1])
    ea, eb = owned_errors(e, a), owned_errors(e, b)
    terms[changed] = lam[changed] * (eb[changed] - ea[changed])
    return T1Decomposition(float(terms.sum()), changed, int(changed.sum()), terms)


def direct_advantage(errors, owners_a, owners_b, sensitivities=None) -> float:
    """A(f1→f2) from the full A1 sums: M(f2∘f1) − M(f1∘f2) = Σ λ e(owners_b) − Σ λ e(owners_a)."""
    e, a, b, lam = _owner_inputs(errors, owners_a, owners_b, sensitivities)
    return float(lam @ owned_errors(e, b) - lam @ owned_errors(e, a))


def interference(total_unit_errors, owners, errors, sensitivities=None) -> float:
    """Δ: the error of the composed model that its owners' errors (each computed on φ) do not account for.

    Δ = Σ_u λ_u (total_u − e[owner_u, u]). Zero under disjoint selectivity with additive errors.
    """
    e, o, _, lam = _owner_inputs(errors, owners, owners, sensitivities)
    tot = check_tensor("total_unit_errors", total_unit_errors).astype(float)
    if tot.shape != (e.shape[1],):
        raise bad("total_unit_errors", f"array of shape {tot.shape}", f"expected shape ({e.shape[1]},)")
    return float(lam @ (tot - owned_errors(e, o)))


def owners_from_mask(pruned: np.ndarray, prune_index: int = 0, quant_index: int | None = 1) -> np.ndarray:
    """Owner map for a pruned+quantized model: pruned units → ``prune_index``, kept → ``quant_index`` (or -1)."""
    m = np.asarray(pruned, dtype=bool).ravel()
    kept = -1 if quant_index is None else quant_index
    return np.where(m, prune_index, kept).astype(np.int64)


# -- owner errors of a (pruning, quantization) pair on weight units: the one definition every backend uses ------
def removal_errors(w0, sensitivities=None) -> np.ndarray:
    """The pruner's error of every weight unit: its removal error on φ, r_u = λ_u w0_u², defined for every unit,
    pruned or not in any particular run (what pruning u costs)."""
    w = check_tensor("w0", w0).astype(float).ravel()
    lam = np.ones_like(w) if sensitivities is None else np.asarray(sensitivities, dtype=float).ravel()
    return lam * w * w


def quantization_errors(w0, wq, sensitivities=None) -> np.ndarray:
    """The quantizer's error of every weight unit: q_u = λ_u (w0_u − Q(φ)_u)², Q applied alone to φ."""
    w = check_tensor("w0", w0).astype(float).ravel()
    q = check_tensor("wq", wq).astype(float).ravel()
    if q.shape != w.shape:
        raise bad("wq", f"{q.size} weights", f"needs one per weight of w0 ({w.size})")
    lam = np.ones_like(w) if sensitivities is None else np.asarray(sensitivities, dtype=float).ravel()
    d = w - q
    return lam * d * d


def owner_errors(w0, wq, sensitivities=None, prune_index: int = 0, quant_index: int = 1) -> np.ndarray:
    """errors[m, u] of a pruning / quantization pair on weight units (rows ``prune_index`` / ``quant_index``):
    removal error r_u for the pruner, quantization error on φ q_u for the quantizer. A pruner that also moves the
    weights it keeps (SparseGPT's update) owns no error on those: what its update changes on a kept unit is not
    an owner's error and shows up in the interference Δ (see proofs/t1_ownership.md, "Owner errors on real
    weights")."""
    r = removal_errors(w0, sensitivities)
    q = quantization_errors(w0, wq, sensitivities)
    e = np.zeros((max(prune_index, quant_index) + 1, r.size))
    e[prune_index], e[quant_index] = r, q
    return e


@dataclass(frozen=True)
class PairDecomposition:
    """Theorem 1 and the interference of both orders of a (P, Q) pair, on weight units, in λ-weighted squared
    weight error (performance M = −error). ``a_pq_*`` are A(P→Q) = err(Q first) − err(P first) = −A(Q→P)."""

    a_pq_t1: float  # Theorem 1's sum over the units whose owner differs
    a_pq_direct: float  # the same from the full owner sums (an identity: equal to a_pq_t1 up to rounding)
    n_changed: int
    delta_pq: float  # Δ of P first: err(P first) − Σ owners' errors; only kept units contribute
    delta_qp: float  # Δ of Q first
    err_pq: float  # λ-weighted error of the composed models
    err_qp: float
    n_units: int

    @property
    def a_pq_actual(self) -> float:
        """err(Q first) − err(P first) = a_pq_t1 + delta_qp − delta_pq (I.1)."""
        return self.err_qp - self.err_pq


def pair_decomposition(w0, wq_alone, w_pq, pruned_pq, w_qp, pruned_qp, sensitivities=None,
                       keep_units: bool = False):
    """The ownership analysis of one weight matrix for both orders of a (P, Q) pair.

    ``w0``: the dense weights; ``wq_alone``: Q applied alone to φ; ``w_pq`` / ``pruned_pq``: the weights and
    pruned mask after P then Q; ``w_qp`` / ``pruned_qp``: after Q then P. Owners: a pruned weight belongs to P
    (error r_u = λ w0²), a kept one to Q (error q_u). Returns a :class:`PairDecomposition` and, with
    ``keep_units``, the per-unit arrays (errors, owners, totals)."""
    e = owner_errors(w0, wq_alone)  # unweighted; λ enters the sums below
    w = check_tensor("w0", w0).astype(float).ravel()
    lam = (np.ones_like(w) if sensitivities is None
           else check_tensor("sensitivities", sensitivities).astype(float).ravel())
    oa = owners_from_mask(pruned_pq)
    ob = owners_from_mask(pruned_qp)
    for name, o in (("pruned_pq", oa), ("pruned_qp", ob)):
        if o.size != w.size:
            raise bad(name, f"{o.size} entries", f"needs one per weight of w0 ({w.size})")
    ta = (w - check_tensor("w_pq", w_pq).astype(float).ravel()) ** 2
    tb = (w - check_tensor("w_qp", w_qp).astype(float).ravel()) ** 2
    t1 = theorem1(e, oa, ob, lam)
    dec = PairDecomposition(
        a_pq_t1=t1.advantage,
        a_pq_direct=direct_advantage(e, oa, ob, lam),
        n_changed=t1.n_changed,
        delta_pq=interference(ta, oa, e, lam),
        delta_qp=interference(tb, ob, e, lam),
        err_pq=float(lam @ ta),
        err_qp=float(lam @ tb),
        n_units=int(w.size),
    )
    if not keep_units:
        return dec, None
    return dec, {"errors": e, "owners_pq": oa, "owners_qp": ob, "total_pq": ta, "total_qp": tb, "sensitivities": lam}
