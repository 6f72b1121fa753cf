"""Checks of proofs/t2_monotonicity.md, part 2: T2.0 (the bound for every Q-first pruner), T2.6 (the expected-myopic
reading: PIH's direction without its sign flip), the fixed-b lines (R2′ repaired with uncensored CERs, R9) and R8
(T2.6 without SCALE)."""

from __future__ import annotations

import numpy as np
from _proofs_model import (
    absmax_quantize,
    advantage,
    cer,
    k_subsets_masks,
    prune_first_set,
    quant_first_set_local,
    quant_first_set_marginal,
    scale_c,
    total_error,
)
from hypothesis import find, given
from hypothesis import strategies as st
from test_proof_t2 import instances

TOL = 1e-9


@st.composite
def with_any_pruner(draw):
    """An instance plus an arbitrary Q-first choice (any member of the family: any pruner at all)."""
    lam, r, q, family, tb_pq, tb_qp = draw(instances())
    pick = draw(st.integers(0, len(family) - 1))
    return lam, r, q, family, tb_pq, family[pick]


@given(with_any_pruner())
def test_t2_0_bound_for_every_quantize_first_pruner(inst):
    """proofs/t2_monotonicity.md T2.0: whatever the Q-first pruner does, with the P-first set minimising the removal
    error, A(Q→P) ≤ Q(S_QP∖S_PQ) − Q(S_PQ∖S_QP) ≤ Q(U∖S_PQ) = E_PQ − E_P ≤ E_Q, and A(Q→P) ≤ the marginal pruner's
    advantage (the bound is attained by the marginal pruner)."""
    lam, r, q, family, tb_pq, s_qp = inst
    s_pq = prune_first_set(lam, r, family, tb_pq)
    a = advantage(lam, r, q, s_pq, s_qp)
    qq = lam * q
    b1 = qq[s_qp & ~s_pq].sum() - qq[s_pq & ~s_qp].sum()
    b2 = qq[~s_pq].sum()
    e_p = (lam * r)[s_pq].sum()
    assert a <= b1 + TOL and b1 <= b2 + TOL and b2 <= qq.sum() + TOL
    assert abs(b2 - (total_error(s_pq, lam, r, q) - e_p)) < TOL
    s_phi = quant_first_set_marginal(lam, r, q, family, np.arange(len(family)))
    assert a <= advantage(lam, r, q, s_pq, s_phi) + TOL


def test_t2_0_needs_the_prune_first_pruner_to_minimise_removal_error():
    """proofs/t2_monotonicity.md T2.0 dropped assumption: a P-first pruner that does not minimise R breaks the bound
    (hypothesis finds it)."""

    def violates(inst):
        lam, r, q, family, _, s_qp = inst
        if len(family) < 2:
            return False
        totals = [(lam * r)[m].sum() for m in family]
        s_pq = family[int(np.argmax(totals))]  # the worst set instead of the best
        return advantage(lam, r, q, s_pq, s_qp) > (lam * q).sum() + 1e-6

    lam, r, q, family, _, s_qp = find(with_any_pruner(), violates)
    assert len(family) >= 2


def test_t2_0_bound_is_tight():
    """proofs/t2_monotonicity.md T2.0 cannot be improved in terms of Q(U∖S_PQ): r = (1, 1 + ε), q = (0, 5), k = 1. P
    first prunes unit 0 and pays q_1 = 5 for quantizing the other; the marginal pruner after quantization prunes
    unit 1 instead: A(Q→P) = 5 − ε → Q(U∖S_PQ) = 5 as ε → 0."""
    for eps in (1e-1, 1e-3, 1e-6):
        lam, r, q = np.ones(2), np.array([1.0, 1.0 + eps]), np.array([0.0, 5.0])
        fam = k_subsets_masks(2, 1)
        s_pq = prune_first_set(lam, r, fam, np.arange(2))
        s_qp = quant_first_set_marginal(lam, r, q, fam, np.arange(2))
        assert abs(advantage(lam, r, q, s_pq, s_qp) - (5 - eps)) < 1e-12


@given(instances(), st.lists(st.integers(0, 10_000), min_size=7, max_size=7))
def test_t2_0_fixed_p_a_positive_advantage_must_fall_once_quantization_is_mild(inst, picks):
    """proofs/t2_monotonicity.md T2.0 along a fixed-p line (q = c(b)·v, b = 2..8, any Q-first pruner at each b): A(b) ≤
    c(b)·V(U∖S_PQ), so whenever a later (milder) bit width b' has c(b')·V(U∖S_PQ) < A(b), the advantage falls: A(b')
    < A(b). PIH's 'quantize first wins more as the gap grows' cannot continue to mild quantizers."""
    lam, r, v, family, tb_pq, _ = inst
    s_pq = prune_first_set(lam, r, family, tb_pq)
    vk = (lam * v)[~s_pq].sum()
    bits = np.arange(2, 9)
    a = []
    for b, pk in zip(bits, picks, strict=True):
        q = scale_c(b) * v
        a.append(advantage(lam, r, q, s_pq, family[pk % len(family)]))
        assert a[-1] <= scale_c(b) * vk + TOL
    for i in range(len(bits)):
        for j in range(i + 1, len(bits)):
            if scale_c(bits[j]) * vk < a[i] - TOL:
                assert a[j] < a[i]


def _a_expected_myopic(lam, r, q, family, tb_pq, tb_qp):
    """Q-first pruner of the expected-myopic reading: rank quantized units by their expected removal error r + q (for a
    row under A2b, E||Q(w)||² = ||w||² + E||ε||²)."""
    s_pq = prune_first_set(lam, r, family, tb_pq)
    s_qp = quant_first_set_local(lam, r + q, family, tb_qp)
    return advantage(lam, r, q, s_pq, s_qp), s_pq, s_qp


@given(instances())
def test_t2_6_expected_myopic_never_favours_quantizing_first(inst):
    """proofs/t2_monotonicity.md T2.6(a): A(Q→P) = −[R(S_QP) − R(S_PQ)] − [Q(S_PQ) − Q(S_QP)] ≤ 0, both brackets ≥ 0,
    and A ≥ −2·Q(S_PQ); any q ≥ 0, any family, any tie-breaking."""
    lam, r, q, family, tb_pq, tb_qp = inst
    a, s_pq, s_qp = _a_expected_myopic(lam, r, q, family, tb_pq, tb_qp)
    d_r = (lam * r)[s_qp].sum() - (lam * r)[s_pq].sum()
    d_q = (lam * q)[s_pq].sum() - (lam * q)[s_qp].sum()
    assert d_r >= -TOL and d_q >= d_r - TOL
    assert a <= TOL and abs(a + d_r + d_q) < 1e-7
    assert a >= -2 * (lam * q)[s_pq].sum() - TOL


@given(instances())
def test_t2_6_expected_myopic_monotone_under_scale(inst):
    """proofs/t2_monotonicity.md T2.6(b): with q = c·v, A(c) is nonincreasing in c with A(0) = 0, so along a fixed-p
    line A(Q→P) is nondecreasing in C*_P − C_Q (PIH's direction), and never positive (no sign flip)."""
    lam, r, v, family, tb_pq, tb_qp = inst
    cs = np.linspace(0.0, 6.0, 49)
    a = np.array([_a_expected_myopic(lam, r, c * v, family, tb_pq, tb_qp)[0] for c in cs])
    assert abs(a[0]) <= TOL and (a <= TOL).all()
    assert (np.diff(a) <= TOL).all()


def test_t2_6_dropped_realised_myopic_pruner_flips_sign():
    """proofs/t2_monotonicity.md T2.6 needs the *expected* removal error: ranking by the realised ||Q(w)||² (A2a[seen])
    gives A > 0 (R5 of the same file): w = (1.0, 3.0 | 1.1, 9.0), two absmax blocks, 3 bits, k = 1, A(Q→P) = +1.00."""
    w = np.array([1.0, 3.0, 1.1, 9.0])
    qw = absmax_quantize(w, 3, block=2)
    r, q, lam = w**2, (w - qw) ** 2, np.ones(4)
    fam = k_subsets_masks(4, 1)
    s_pq = prune_first_set(lam, r, fam, np.arange(4))
    a_seen = advantage(lam, r, q, s_pq, quant_first_set_local(lam, qw**2, fam, np.arange(4)))
    a_expected = advantage(lam, r, q, s_pq, quant_first_set_local(lam, r + q, fam, np.arange(4)))
    assert abs(a_seen - 1.0) < 1e-9 and a_expected <= 0


def test_r8_expected_myopic_not_monotone_without_scale():
    """proofs/t2_monotonicity.md R8: T2.6(b) needs SCALE. r = (1, 2), k = 1; q(8) = (0.01, 0), q(4) = (1.2, 0), q(3) =
    (1.2, 5) (each q_u nonincreasing in b). The reference curve E_Q = 6.2, 1.2, 0.01 at b = 3, 4, 8 brackets E_P =
    1, so C*_P is uncensored; along b = 3, 4, 8 (gap increasing) A(Q→P) = 0, −2.2, 0: not monotone."""
    lam, r = np.ones(2), np.array([1.0, 2.0])
    fam = k_subsets_masks(2, 1)
    bits = np.array([3, 4, 8])
    qs = {3: np.array([1.2, 5.0]), 4: np.array([1.2, 0.0]), 8: np.array([0.01, 0.0])}
    e_q = np.array([qs[b].sum() for b in bits])
    s_pq = prune_first_set(lam, r, fam, np.arange(2))
    e_p = (lam * r)[s_pq].sum()
    c_star = cer(e_p, bits, e_q)
    assert c_star is not None
    gaps = [c_star - 16 / b for b in bits]
    a = [advantage(lam, r, qs[b], s_pq, quant_first_set_local(lam, r + qs[b], fam, np.arange(2))) for b in bits]
    assert np.all(np.diff(gaps) > 0)
    np.testing.assert_allclose(a, [0.0, -2.2, 0.0], atol=1e-12)


def test_t2_6_real_rounding():
    """proofs/t2_monotonicity.md T2.6 on real round-to-nearest (row units, per-row absmax, Student-t(4) rows 8 x 16, k
    = 4 rows, b = 2..8, 400 draws of numpy.random.default_rng(0)): A ≤ 0 in every instance (T2.6(a) needs no SCALE);
    the mean A is nondecreasing in b (the gap) and the fraction of instances not monotone along b is small (R8 shows
    it is not zero in general)."""
    rng = np.random.default_rng(0)
    bits = np.arange(2, 9)
    fam_k = 4
    A = np.zeros((400, bits.size))
    for t in range(400):
        W = rng.standard_t(4, size=(8, 16))
        r = (W**2).sum(1)
        order_p = np.argsort(r, kind="stable")
        s_pq = np.zeros(8, bool)
        s_pq[order_p[:fam_k]] = True
        for j, b in enumerate(bits):
            Qw = np.stack([absmax_quantize(row, int(b)) for row in W])
            q = ((W - Qw) ** 2).sum(1)
            s_qp = np.zeros(8, bool)
            s_qp[np.argsort(r + q, kind="stable")[:fam_k]] = True
            A[t, j] = advantage(np.ones(8), r, q, s_pq, s_qp)
    assert (A <= 1e-12).all()
    mean = A.mean(0)
    assert (np.diff(mean) >= -1e-12).all()
    nonmono = (np.diff(A, axis=1) < -1e-12).any(axis=1).mean()
    assert nonmono < 0.1


def test_r2_prime_fixed_b_marginal_not_monotone_uncensored():
    """proofs/t2_monotonicity.md R2′ (R2 repaired): A2a[phi], r = (1, 2, 10), q(b) = c(b)·(0, 1, 0) with c = 6, 1.5,
    0.4, 0.01 at b = 2, 3, 4, 8; the line b = 3. k = 1: E_P = 1, k = 2: E_P = 3, both inside the curve's range
    (uncensored). The gap rises (C*_P − C_Q(3) = −0.606 → +0.889, crossing 0) while A(Q→P) falls from 0.5 to 0."""
    lam, r = np.ones(3), np.array([1.0, 2.0, 10.0])
    bits = np.array([2, 3, 4, 8])
    c = {2: 6.0, 3: 1.5, 4: 0.4, 8: 0.01}
    v = np.array([0.0, 1.0, 0.0])
    e_q = np.array([c[b] * v.sum() for b in bits])
    q = c[3] * v
    out = []
    for k in (1, 2):
        fam = k_subsets_masks(3, k)
        s_pq = prune_first_set(lam, r, fam, np.arange(len(fam)))
        s_qp = quant_first_set_marginal(lam, r, q, fam, np.arange(len(fam)))
        c_star = cer((lam * r)[s_pq].sum(), bits, e_q)
        assert c_star is not None
        out.append((c_star - 16 / 3, advantage(lam, r, q, s_pq, s_qp)))
    (g1, a1), (g2, a2) = out
    assert g2 > g1 and abs(a1 - 0.5) < 1e-12 and abs(a2) < 1e-12
    assert abs(g1 - (-0.6061)) < 1e-3 and abs(g2 - 0.8889) < 1e-3


def test_r9_fixed_b_expected_myopic_not_monotone_uncensored():
    """proofs/t2_monotonicity.md R9: T2.6 says nothing along fixed-b lines. r = (2, 8, 6, 9), v = (5, 6, 9, 7), q(b) =
    30·c(b)·v with c(b) = (2^(b−1) − 1)^(−2), the curve at b = 2, 3, 4, 8, the line b = 3, k = 1, 2, 3 (all
    uncensored): A(Q→P) = 0, −12, −9.667 while the gap rises."""
    lam = np.ones(4)
    r, v = np.array([2.0, 8.0, 6.0, 9.0]), np.array([5.0, 6.0, 9.0, 7.0])
    bits = np.array([2, 3, 4, 8])
    e_q = 30 * scale_c(bits) * v.sum()
    q = 30 * scale_c(3) * v
    gaps, a = [], []
    for k in (1, 2, 3):
        fam = k_subsets_masks(4, k)
        tb = np.arange(len(fam))
        s_pq = prune_first_set(lam, r, fam, tb)
        c_star = cer((lam * r)[s_pq].sum(), bits, e_q)
        assert c_star is not None
        gaps.append(c_star - 16 / 3)
        a.append(advantage(lam, r, q, s_pq, quant_first_set_local(lam, r + q, fam, tb)))
    assert np.all(np.diff(gaps) > 0)
    np.testing.assert_allclose(a, [0.0, -12.0, -29 / 3], atol=1e-9)
