"""Checks of proofs/harma.md: magnitude pruning with max-scaled block quantization."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from _proofs_model import absmax_quantize
from hypothesis import given
from hypothesis import strategies as st

TOL = 1e-12


def groupwise_magnitude_mask(w, group, k_per_group, tiebreak):
    """Magnitude pruning with comparison groups of size ``group`` (the whole tensor when group = w.size)."""
    m = np.zeros(w.size, bool)
    for i in range(0, w.size, group):
        idx = np.arange(i, min(i + group, w.size))
        order = np.lexsort((tiebreak[idx], np.abs(w[idx])))
        m[idx[order[:k_per_group]]] = True
    return m


@st.composite
def tensors(draw, one_scale=False):
    """A tensor on a 0.1 grid (ties common), a block size and a comparison-group layout satisfying (C)."""
    n_blocks = draw(st.integers(1, 4))
    block = draw(st.sampled_from([1, 2, 4, 8]))
    n = n_blocks * block
    w = np.array(draw(st.lists(st.integers(-30, 30), min_size=n, max_size=n))) / 10.0
    bits = draw(st.integers(2, 6))
    if one_scale:
        group = draw(st.sampled_from([d for d in (1, 2, 4, 8) if block % d == 0]))
        k = draw(st.integers(0, group - 1))  # every group keeps an entry
    else:
        group = draw(st.sampled_from([n] + [block * j for j in (1, 2, 4) if n % (block * j) == 0]))
        k = draw(st.integers(0, group))
    tb = np.array(draw(st.permutations(range(n))))
    return w, block, group, k, bits, tb


@given(tensors())
def test_h1_prune_first_no_interference(t):
    """proofs/harma.md H1: with (C) (every block inside one magnitude comparison group), Q(P(w)) = 1_kept ⊙ Q(w),
    so E_PQ = E(S) = ε(P) + ε(Q) − Σ_S ε² ≤ ε(P) + ε(Q): Δ_PQ = 0."""
    w, block, group, k, bits, tb = t
    s = groupwise_magnitude_mask(w, group, k, tb)
    qw = absmax_quantize(w, bits, block)
    qpw = absmax_quantize(np.where(s, 0.0, w), bits, block)
    assert np.array_equal(qpw, np.where(s, 0.0, qw))
    eps2 = (w - qw) ** 2
    e_pq = float(((w - qpw) ** 2).sum())
    assert e_pq == pytest.approx((w[s] ** 2).sum() + eps2[~s].sum(), abs=TOL)
    assert e_pq <= (w[s] ** 2).sum() + eps2.sum() + TOL


ALPHAS = np.linspace(0.5, 1.0, 26)


def mse_quantize(w, bits, block, alphas=ALPHAS):
    """Symmetric quantization with the scale α·m_B/L minimising the block's squared error (clipping at ±L·s)."""
    L = 2 ** (bits - 1) - 1
    out = np.zeros_like(w)
    for i in range(0, w.size, block):
        x = w[i : i + block]
        m = np.abs(x).max()
        if m == 0:
            continue
        best = None
        for a in alphas:
            s = a * m / L
            qx = s * np.clip(np.round(x / s), -L, L)
            err = ((x - qx) ** 2).sum()
            if best is None or err < best[0] - 1e-15:
                best = (err, qx)
        out[i : i + block] = best[1]
    return out


@given(tensors())
def test_h1_prime_mse_scale_refit_never_hurts(t):
    """proofs/harma.md H1′: with the MSE-fitted scale refitted after magnitude pruning, Δ_PQ ≤ 0."""
    w, block, group, k, bits, tb = t
    s = groupwise_magnitude_mask(w, group, k, tb)
    qw = mse_quantize(w, bits, block)
    qpw = mse_quantize(np.where(s, 0.0, w), bits, block)
    assert (qpw[s] == 0).all()
    disjoint = (w[s] ** 2).sum() + ((w - qw)[~s] ** 2).sum()
    assert ((w - qpw) ** 2).sum() <= disjoint + 1e-12


def test_h1_prime_strict_example():
    """proofs/harma.md H1′: the MSE refit can make Δ_PQ strictly negative: w = (2.5, 1.1, 1.2, 2.8), one block,
    2 bits, prune 1.1: Q(w) = 1.904·(1, 1, 1, 1), after pruning 2.184·(1, 0, 1, 1); Δ_PQ = −0.206."""
    w = np.array([2.5, 1.1, 1.2, 2.8])
    s = np.array([False, True, False, False])
    qw = mse_quantize(w, 2, 4)
    qpw = mse_quantize(np.where(s, 0.0, w), 2, 4)
    assert qw == pytest.approx([1.904] * 4) and qpw == pytest.approx([2.184, 0.0, 2.184, 2.184])
    disjoint = (w[s] ** 2).sum() + ((w - qw)[~s] ** 2).sum()
    assert ((w - qpw) ** 2).sum() - disjoint == pytest.approx(-0.20608)


@given(tensors(one_scale=True))
def test_h2_one_scale_prune_first_optimal(t):
    """proofs/harma.md H2: with each comparison group inside one absmax block, magnitude-on-w minimises E(S) over
    every set with the same per-group counts, so A(Q→P) ≤ 0 for every tie-breaking of the Q-first pruner."""
    w, block, group, k, bits, tb = t
    qw = absmax_quantize(w, bits, block)
    eps2 = (w - qw) ** 2

    def e_of(mask):
        return float((w[mask] ** 2).sum() + eps2[~mask].sum())

    s = groupwise_magnitude_mask(w, group, k, tb)
    e_pq = float(((w - absmax_quantize(np.where(s, 0.0, w), bits, block)) ** 2).sum())
    assert e_pq == pytest.approx(e_of(s), abs=TOL)
    for tb2 in (tb[::-1], np.roll(tb, 1)):
        assert e_of(groupwise_magnitude_mask(qw, group, k, tb2)) >= e_pq - TOL
    if w.size <= 8:  # brute force over all pruned sets with the same per-group counts
        groups = [list(range(i, i + group)) for i in range(0, w.size, group)]
        best = 0.0
        for g in groups:
            cost = min(sum(w[u] ** 2 - eps2[u] for u in c) for c in combinations(g, k)) if k else 0.0
            best += cost
        assert e_pq <= eps2.sum() + best + 1e-9


def test_h3_quantize_first_exceeds_sum():
    """proofs/harma.md H3: (a) w = (0.9, 1.1, 3.0), 3 bits, tie broken towards 1.1: E_QP = 1.22 > 0.83;
    (b) w = (1.0, 1.8 | 1.1, 3.0), blocks of 2, 3 bits, no ties: E_QP = 1.25 > 1.05, E_PQ = 1.01."""
    w = np.array([0.9, 1.1, 3.0])
    qw = absmax_quantize(w, 3)
    eps2 = (w - qw) ** 2
    s_qp = np.array([False, True, False])
    e_qp = (w[s_qp] ** 2).sum() + eps2[~s_qp].sum()
    assert e_qp == pytest.approx(1.22) and 0.81 + eps2.sum() == pytest.approx(0.83)
    w = np.array([1.0, 1.8, 1.1, 3.0])
    qw = absmax_quantize(w, 3, 2)
    assert qw == pytest.approx([1.2, 1.8, 1.0, 3.0])
    assert len(set(np.abs(qw).round(12))) == 4  # no ties
    eps2 = (w - qw) ** 2
    s_qp = groupwise_magnitude_mask(qw, 4, 1, np.arange(4))
    s_pq = groupwise_magnitude_mask(w, 4, 1, np.arange(4))
    e_qp = (w[s_qp] ** 2).sum() + eps2[~s_qp].sum()
    e_pq = ((w - absmax_quantize(np.where(s_pq, 0.0, w), 3, 2)) ** 2).sum()
    assert (e_qp, (w[s_pq] ** 2).sum() + eps2.sum(), e_pq) == pytest.approx((1.25, 1.05, 1.01))


def test_h4_across_blocks_quantize_first_wins():
    """proofs/harma.md H4: w = (1.0, 3.0 | 1.1, 9.0), blocks of 2, 3 bits, global k = 1: E_PQ = 2.21,
    E_QP = 1.21, A(Q→P) = +1.00 > 0: 'A ≤ 0 always' fails without ONE-SCALE."""
    w = np.array([1.0, 3.0, 1.1, 9.0])
    qw = absmax_quantize(w, 3, 2)
    s_pq = groupwise_magnitude_mask(w, 4, 1, np.arange(4))
    s_qp = groupwise_magnitude_mask(qw, 4, 1, np.arange(4))
    e_pq = ((w - absmax_quantize(np.where(s_pq, 0.0, w), 3, 2)) ** 2).sum()
    e_qp = ((w - np.where(s_qp, 0.0, qw)) ** 2).sum()
    assert (e_pq, e_qp) == pytest.approx((2.21, 1.21))
    assert e_pq - e_qp == pytest.approx(1.0)


def test_mag_dropped_interference_depends_on_bits():
    """proofs/harma.md (MAG dropped) and proofs/interference.md I.3: removing the block maximum of
    w = (3.0, 2.0, 1.1) gives Δ_PQ = +0.0444 at 3 bits and −1.40 at 2 bits."""
    w = np.array([3.0, 2.0, 1.1])
    s = np.array([True, False, False])
    deltas = []
    for bits in (3, 2):
        qw = absmax_quantize(w, bits)
        qpw = absmax_quantize(np.where(s, 0.0, w), bits)
        deltas.append(((w - qpw) ** 2).sum() - ((w[s] ** 2).sum() + ((w - qw)[~s] ** 2).sum()))
    assert deltas == pytest.approx([0.4 / 9, -1.40])


def test_h2_needs_symmetric_grid():
    """proofs/harma.md (odd rounding dropped): signed grid {−2, −1, 0, 1}·s, s = 1, w = (1.9, −1.8), k = 1:
    magnitude on w prunes −1.8 (E_PQ = 4.05), magnitude on Q(w) = (1, −2) prunes 1.9 (E_QP = 3.65): A = +0.40."""
    w = np.array([1.9, -1.8])
    qw = np.clip(np.round(w), -2, 1)
    eps2 = (w - qw) ** 2
    e_pq = w[1] ** 2 + eps2[0]
    e_qp = w[0] ** 2 + eps2[1]
    assert (e_pq, e_qp) == pytest.approx((4.05, 3.65))
    assert e_pq - e_qp == pytest.approx(0.40)


def test_h2_needs_uniform_sensitivity():
    """proofs/harma.md (A1-weight dropped): λ = (2, 1, 1), w = (0.9, 1.1, 3.0), one 3-bit block, k = 1:
    E_PQ = 1.63, quantize-first with the tie broken towards 1.1 gives E_QP = 1.23, A(Q→P) = +0.40."""
    w, lam = np.array([0.9, 1.1, 3.0]), np.array([2.0, 1.0, 1.0])
    qw = absmax_quantize(w, 3)
    eps2 = (w - qw) ** 2
    s_pq = groupwise_magnitude_mask(w, 3, 1, np.arange(3))
    s_qp = groupwise_magnitude_mask(qw, 3, 1, np.array([1, 0, 2]))
    e_pq = float(lam @ np.where(s_pq, w**2, eps2))
    e_qp = float(lam @ np.where(s_qp, w**2, eps2))
    assert (e_pq, e_qp) == pytest.approx((1.63, 1.23))
    assert e_pq - e_qp == pytest.approx(0.40)
