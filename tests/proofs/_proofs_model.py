"""The abstract unit model of proofs/ in plain numpy: errors, pruners, quantizers, CER.

Independent of ``pih`` on purpose: the proofs' statements are checked against this small reference, and the
T1 tests additionally check ``pih.ownership`` against it.
"""

from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------- unit model


def total_error(pruned: np.ndarray, lam: np.ndarray, r: np.ndarray, q: np.ndarray) -> float:
    """E(S) = R(S) + Q(U \\ S) for the boolean mask ``pruned`` (A1 + DS)."""
    m = np.asarray(pruned, dtype=bool)
    return float((lam * r)[m].sum() + (lam * q)[~m].sum())


def _argmin_family(scores: np.ndarray, family: list[np.ndarray], tiebreak: np.ndarray) -> np.ndarray:
    """The set of ``family`` with the least total score; ties broken by the order ``tiebreak`` of the family."""
    totals = np.array([scores[m].sum() for m in family])
    best = totals.min()
    # exact-arithmetic ties are rare with floats; treat values within 1e-12 (relative) as ties
    tol = 1e-12 * max(1.0, abs(best))
    cands = [i for i in range(len(family)) if totals[i] <= best + tol]
    pick = min(cands, key=lambda i: tiebreak[i])
    return family[pick]


def k_subsets_masks(n: int, k: int) -> list[np.ndarray]:
    """All k-subsets of n units as boolean masks."""
    from itertools import combinations

    out = []
    for c in combinations(range(n), k):
        m = np.zeros(n, dtype=bool)
        m[list(c)] = True
        out.append(m)
    return out


def prune_first_set(lam, r, family, tiebreak) -> np.ndarray:
    """S_PQ: the pruner sees φ and minimises R(S) = Σ_S λ r (A2a)."""
    return _argmin_family(lam * r, family, tiebreak)


def quant_first_set_marginal(lam, r, q, family, tiebreak) -> np.ndarray:
    """S_QP under A2a-marginal: minimise Σ_S λ (r − q), the A1 degradation of the quantized model."""
    return _argmin_family(lam * (r - q), family, tiebreak)


def quant_first_set_local(lam, rho, family, tiebreak) -> np.ndarray:
    """S_QP under A2a-local (myopic): minimise Σ_S λ ρ, ρ = error of removing the quantized unit."""
    return _argmin_family(lam * rho, family, tiebreak)


def advantage(lam, r, q, s_pq, s_qp) -> float:
    """A(Q→P) = E_PQ − E_QP (positive: quantizing first is better)."""
    return total_error(s_pq, lam, r, q) - total_error(s_qp, lam, r, q)


def advantage_marginal_k(lam, r, q, k, tiebreak_pq=None, tiebreak_qp=None) -> float:
    """A(Q→P) under A2a-marginal for unstructured pruning of k units (fast path by sorting)."""
    n = len(r)
    tb1 = np.arange(n) if tiebreak_pq is None else tiebreak_pq
    tb2 = np.arange(n) if tiebreak_qp is None else tiebreak_qp
    s_pq = np.zeros(n, bool)
    s_pq[np.lexsort((tb1, lam * r))[:k]] = True
    s_qp = np.zeros(n, bool)
    s_qp[np.lexsort((tb2, lam * (r - q)))[:k]] = True
    return advantage(lam, r, q, s_pq, s_qp)


# ----------------------------------------------------------------------------------------------- quantizers


def absmax_quantize(w: np.ndarray, bits: int, block: int | None = None) -> np.ndarray:
    """Symmetric absmax (max-scaled) quantization, levels s·{−L..L}, L = 2^(b−1) − 1, one scale per block.

    Rounding is numpy's round-half-to-even, which is odd-symmetric: Q(−x) = −Q(x).
    """
    w = np.asarray(w, dtype=float)
    blk = w.size if block is None else block
    levels = 2 ** (bits - 1) - 1
    out = np.zeros_like(w)
    for i in range(0, w.size, blk):
        x = w[i : i + blk]
        m = np.abs(x).max()
        if m == 0 or levels == 0:
            continue
        s = m / levels
        out[i : i + blk] = s * np.round(x / s)
    return out


def magnitude_prune_mask(values: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """The k entries of least |values| (ties broken by ``tiebreak`` order, default by index)."""
    v = np.abs(np.asarray(values, dtype=float))
    tb = np.arange(v.size) if tiebreak is None else tiebreak
    m = np.zeros(v.size, bool)
    m[np.lexsort((tb, v))[:k]] = True
    return m


def expected_local_advantage(w: np.ndarray, bits: int, k: int, block: int | None = None) -> float:
    """E over uniform random tie-breaking of A(Q→P) for magnitude pruning + absmax, tensor level, λ = 1."""
    qw = absmax_quantize(w, bits, block)
    r, q = w**2, (w - qw) ** 2
    d = r - q
    s_pq = magnitude_prune_mask(w, k)
    e_pq = total_error(s_pq, np.ones_like(w), r, q)
    a = np.abs(qw)
    if k == 0:
        return 0.0
    thr = np.sort(a)[k - 1]
    below, cls = a < thr, a == thr
    m = k - below.sum()
    e_qp = q.sum() + d[below].sum() + m * d[cls].mean()
    return e_pq - e_qp


# ----------------------------------------------------------------------------------------------- CER


def scale_c(bits) -> np.ndarray:
    """c(b) = (2^(b−1) − 1)^(−2): the SCALE family of the high-resolution absmax noise model."""
    return 1.0 / (2.0 ** (np.asarray(bits, dtype=float) - 1) - 1) ** 2


def cer(err: float, bits: np.ndarray, err_q: np.ndarray) -> float | None:
    """C* for a method of error ``err``: the ratio 16/b where the linear interpolation of (16/b, −E_Q(b))
    equals −err. None when censored (outside the measured range)."""
    ratio = 16.0 / np.asarray(bits, dtype=float)
    m = -np.asarray(err_q, dtype=float)
    target = -err
    for i in range(len(ratio) - 1):
        lo, hi = m[i], m[i + 1]
        if min(lo, hi) <= target <= max(lo, hi):
            if hi == lo:
                return float(ratio[i])
            t = (target - lo) / (hi - lo)
            return float(ratio[i] + t * (ratio[i + 1] - ratio[i]))
    return None
