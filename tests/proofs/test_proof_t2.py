"""Checks of proofs/t2_monotonicity.md: T2.1–T2.3 hold; the stronger versions R1–R7 are refuted."""

from __future__ import annotations

import numpy as np
import pytest
from _proofs_model import (
    absmax_quantize,
    advantage,
    advantage_marginal_k,
    cer,
    expected_local_advantage,
    k_subsets_masks,
    magnitude_prune_mask,
    prune_first_set,
    quant_first_set_local,
    quant_first_set_marginal,
    scale_c,
    total_error,
)
from hypothesis import assume, example, find, given, settings
from hypothesis import strategies as st

TOL = 1e-9
BITS = np.arange(2, 9)

# values on a coarse grid so that ties (the hard case for tie-breaking) are common
vals = st.integers(0, 12).map(lambda i: i / 4.0)


@st.composite
def instances(draw, n_max=6, structured=True):
    """A random abstract instance: λ, r, q (or v), a family of allowed pruned sets and tie-breaking orders."""
    n = draw(st.integers(1, n_max))
    lam = np.array(draw(st.lists(vals, min_size=n, max_size=n)))
    r = np.array(draw(st.lists(vals, min_size=n, max_size=n)))
    v = np.array(draw(st.lists(vals, min_size=n, max_size=n)))
    k = draw(st.integers(0, n))
    family = k_subsets_masks(n, k)
    if structured and draw(st.booleans()) and len(family) > 1:
        # a structured family: any nonempty subfamily of the k-subsets (e.g. only whole rows are allowed)
        keep = draw(st.lists(st.booleans(), min_size=len(family), max_size=len(family)))
        sub = [m for m, kf in zip(family, keep, strict=True) if kf]
        family = sub or family[:1]
    tb_pq = np.array(draw(st.permutations(range(len(family)))))
    tb_qp = np.array(draw(st.permutations(range(len(family)))))
    return lam, r, v, family, tb_pq, tb_qp


def _a_marginal(lam, r, q, family, tb_pq, tb_qp):
    s_pq = prune_first_set(lam, r, family, tb_pq)
    s_qp = quant_first_set_marginal(lam, r, q, family, tb_qp)
    return advantage(lam, r, q, s_pq, s_qp), s_pq, s_qp


@given(instances())
def test_t2_1_sign_and_bound(inst):
    """proofs/t2_monotonicity.md T2.1: 0 ≤ A(Q→P) ≤ Q(S_QP∖S_PQ) − Q(S_PQ∖S_QP) ≤ E_Q, any tie-breaking,
    any family of allowed pruned sets; A = 0 iff S_PQ minimises E."""
    lam, r, q, family, tb_pq, tb_qp = inst
    a, s_pq, s_qp = _a_marginal(lam, r, q, family, tb_pq, tb_qp)
    qq = lam * q
    bound = qq[s_qp & ~s_pq].sum() - qq[s_pq & ~s_qp].sum()
    assert -TOL <= a <= bound + TOL
    assert bound <= qq.sum() + TOL
    e_min = min(total_error(m, lam, r, q) for m in family)
    assert (abs(a) <= TOL) == (total_error(s_pq, lam, r, q) <= e_min + TOL)


@given(instances())
def test_t2_2_convex_nondecreasing_in_c(inst):
    """proofs/t2_monotonicity.md T2.2: with q = c·v (SCALE), A(c) is convex, A(0) = 0, nondecreasing,
    strictly increasing once positive, and A(c)/c is nondecreasing."""
    lam, r, v, family, tb_pq, tb_qp = inst
    cs = np.linspace(0.0, 6.0, 49)
    a = np.array([_a_marginal(lam, r, c * v, family, tb_pq, tb_qp)[0] for c in cs])
    assert abs(a[0]) <= TOL
    assert (a >= -TOL).all()
    assert (np.diff(a) >= -TOL).all()
    assert (np.diff(a, 2) >= -1e-7).all()  # convexity on the grid
    pos = a > TOL
    if pos.any():
        first = np.argmax(pos)
        assert (np.diff(a[max(first - 1, 0) :]) > 0).all() or first == 0
    ratio = a[1:] / cs[1:]
    assert (np.diff(ratio) >= -1e-7).all()


@given(instances(structured=False))
def test_t2_2_nonincreasing_in_cer_gap(inst):
    """proofs/t2_monotonicity.md T2.2: along a fixed pruning setting, with C_Q = 16/b and C*_P from the
    interpolated reference curve, A(Q→P) is a nonincreasing function of C*_P − C_Q."""
    lam, r, v, family, tb_pq, tb_qp = inst
    vq = float((lam * v).sum())
    assume(vq > 0)
    c = scale_c(BITS)
    err_q = c * vq
    e_p = min(float((lam * r)[m].sum()) for m in family)
    c_star = cer(e_p, BITS, err_q)
    assume(c_star is not None)
    gaps = c_star - 16.0 / BITS
    a = np.array([_a_marginal(lam, r, cc * v, family, tb_pq, tb_qp)[0] for cc in c])
    order = np.argsort(gaps)
    assert (np.diff(a[order]) <= TOL).all()


@given(instances(structured=False), st.integers(0, 2**31 - 1))
def test_t2_3_expectation_nondecreasing(inst, seed):
    """proofs/t2_monotonicity.md T2.3: with a random pattern v whose law does not depend on b
    (realised errors = c(b)·v), the mean of A(c) over realisations is nondecreasing and convex in c."""
    lam, r, s, family, tb_pq, tb_qp = inst
    rng = np.random.default_rng(seed)
    xi = rng.uniform(-0.5, 0.5, size=(24, len(r))) ** 2 * 12  # zero-mean uniform noise, squared, mean 1
    cs = np.linspace(0.0, 4.0, 9)
    mean_a = np.array([np.mean([_a_marginal(lam, r, c * s * x, family, tb_pq, tb_qp)[0] for x in xi])
                       for c in cs])
    assert abs(mean_a[0]) <= TOL
    assert (np.diff(mean_a) >= -1e-7).all()
    assert (np.diff(mean_a, 2) >= -1e-6).all()


# ------------------------------------------------------------------------------------------ refutations


def test_r1_scale_family_is_anti_pih():
    """proofs/t2_monotonicity.md R1: r = (1, 2), v = (0, 20), k = 1, SCALE family: A = 19, 1.222, 0 at
    b = 2, 3, 4 while the CER gap is −3.565, −0.898, +0.435: A falls as the gap grows, and A > 0 where Q is
    the stronger method."""
    lam, r, v = np.ones(2), np.array([1.0, 2.0]), np.array([0.0, 20.0])
    c = scale_c(BITS)
    c_star = cer(1.0, BITS, c * v.sum())
    assert c_star == pytest.approx(4.435, abs=1e-9)
    gaps = c_star - 16.0 / BITS
    a = np.array([advantage_marginal_k(lam, r, cc * v, 1) for cc in c])
    assert gaps[:3] == pytest.approx([-3.565, -0.898333, 0.435], abs=1e-5)
    assert a[:3] == pytest.approx([19.0, 11 / 9, 0.0], abs=1e-12)
    assert (np.diff(a) <= 0).all() and (np.diff(gaps) > 0).all()
    assert a[0] > 0 > gaps[0]  # sign flip predicted by PIH does not happen


def test_r2_fixed_bits_not_monotone_in_ratio():
    """proofs/t2_monotonicity.md R2′ (the instance): r = (1, 2, 10), q = (0, 1.5, 0): A = 0.5 at k = 1, 0 at k = 2,
    while G(Q,P) = E_P − E_Q rises from −0.5 to 1.5 (the CERs on an explicit curve: test_r2_prime_...)."""
    lam, r, q = np.ones(3), np.array([1.0, 2.0, 10.0]), np.array([0.0, 1.5, 0.0])
    a = [advantage_marginal_k(lam, r, q, k) for k in range(4)]
    assert a == pytest.approx([0.0, 0.5, 0.0, 0.0])
    e_p = [np.sort(lam * r)[:k].sum() for k in (1, 2)]
    assert np.array(e_p) - q.sum() == pytest.approx([-0.5, 1.5])


def test_r3_without_scale_either_direction():
    """proofs/t2_monotonicity.md R3: without SCALE, q(b_hi) = (0, 1.5) → A = 0.5 and q(b_lo) = (1, 1.5) → A = 0:
    A decreases as quantization gets stronger, against T2.2's direction."""
    lam, r = np.ones(2), np.array([1.0, 2.0])
    a_hi = advantage_marginal_k(lam, r, np.array([0.0, 1.5]), 1)
    a_lo = advantage_marginal_k(lam, r, np.array([1.0, 1.5]), 1)
    assert (a_hi, a_lo) == pytest.approx((0.5, 0.0))


R4_W = (0.9, 1.1, 3.0)


def _local_instance(w, bits, block=None):
    w = np.asarray(w, dtype=float)
    qw = absmax_quantize(w, bits, block)
    return np.ones_like(w), w**2, (w - qw) ** 2, qw**2


def test_r4_myopic_pruner_breaks_sign():
    """proofs/t2_monotonicity.md R4: w = (0.9, 1.1, 3.0), one absmax scale, 3 bits, k = 1: the myopic pruner
    ties 0.9 and 1.1; breaking the tie towards 1.1 gives A = 0.82 − 1.22 = −0.40 (expected −0.20 under random
    tie-breaking) although pruning is the stronger method."""
    w = np.array(R4_W)
    lam, r, q, rho = _local_instance(w, 3)
    assert absmax_quantize(w, 3) == pytest.approx([1.0, 1.0, 3.0])
    fam = k_subsets_masks(3, 1)
    s_pq = prune_first_set(lam, r, fam, np.arange(3))
    s_bad = quant_first_set_local(lam, rho, fam, np.array([1, 0, 2]))  # tie broken towards 1.1
    assert advantage(lam, r, q, s_pq, s_bad) == pytest.approx(-0.40)
    assert expected_local_advantage(w, 3, 1) == pytest.approx(-0.20)
    assert r.min() - q.sum() > 0  # G(Q,P) > 0: pruning is stronger
    s_marg = quant_first_set_marginal(lam, r, q, fam, np.arange(3))
    assert advantage(lam, r, q, s_pq, s_marg) >= 0  # the marginal pruner is not fooled


@st.composite
def weight_instances(draw):
    n = draw(st.integers(2, 6))
    w = np.array(draw(st.lists(st.integers(-40, 40).map(lambda i: i / 10.0), min_size=n, max_size=n)))
    bits = draw(st.integers(2, 4))
    k = draw(st.integers(1, n - 1))
    tb = np.array(draw(st.permutations(range(n))))
    return w, bits, k, tb


def _myopic_and_marginal(inst):
    w, bits, k, tb = inst
    lam, r, q, rho = _local_instance(w, bits)
    fam = k_subsets_masks(len(w), k)
    tbf = np.arange(len(fam))[::-1] if tb[0] % 2 else np.arange(len(fam))
    s_pq = prune_first_set(lam, r, fam, np.arange(len(fam)))
    a_myopic = advantage(lam, r, q, s_pq, quant_first_set_local(lam, rho, fam, tbf))
    a_marg = advantage(lam, r, q, s_pq, quant_first_set_marginal(lam, r, q, fam, tbf))
    return a_myopic, a_marg


@given(weight_instances())
@example((np.array(R4_W), 3, 1, np.array([1, 0, 2])))
@example((np.array([0.2, 0.3]), 2, 1, np.array([1, 0])))  # hypothesis.find's shrunk counterexample (R4)
def test_myopic_never_beats_marginal(inst):
    """proofs/t2_monotonicity.md T2.1 vs R4: the marginal Q-first pruner is optimal, so
    A_marginal ≥ max(0, A_myopic); the pinned examples are R4 and the shrunk w = (0.2, 0.3), 2 bits, where
    A_myopic = −0.06 < 0."""
    a_myopic, a_marg = _myopic_and_marginal(inst)
    assert a_marg >= -TOL
    assert a_marg >= a_myopic - TOL


def test_r4_hypothesis_finds_myopic_counterexample():
    """proofs/t2_monotonicity.md R4: replacing A2a[phi] by A2a[seen] (myopic pruner) breaks T2.1; hypothesis
    finds an instance with A(Q→P) < 0 on its own."""
    found = find(
        weight_instances(),
        lambda inst: _myopic_and_marginal(inst)[0] < -1e-9,
        settings=settings(max_examples=5000, derandomize=True, database=None),
    )
    assert _myopic_and_marginal(found)[0] < 0
    a_myopic, a_marg = _myopic_and_marginal((np.array([0.2, 0.3]), 2, 1, np.array([1, 0])))  # pinned shrink
    assert a_myopic == pytest.approx(-0.06) and a_marg == pytest.approx(0.0)


def test_r5_local_reading_both_signs():
    """proofs/t2_monotonicity.md R5: w = (1.0, 3.0 | 1.1, 9.0), absmax blocks of 2, 3 bits, k = 1, magnitude on
    Q(w) = (1, 3 | 0, 9): E_PQ = 2.21, E_QP = 1.21, A = +1.00 (with R4's −0.40: the local reading has no sign)."""
    w = np.array([1.0, 3.0, 1.1, 9.0])
    qw = absmax_quantize(w, 3, block=2)
    assert qw == pytest.approx([1.0, 3.0, 0.0, 9.0])
    lam, r, q = np.ones(4), w**2, (w - qw) ** 2
    s_pq = magnitude_prune_mask(w, 1)
    s_qp = magnitude_prune_mask(qw, 1)
    assert total_error(s_pq, lam, r, q) == pytest.approx(2.21)
    assert total_error(s_qp, lam, r, q) == pytest.approx(1.21)
    assert advantage(lam, r, q, s_pq, s_qp) == pytest.approx(1.0)


def test_r6_same_gap_different_advantage():
    """proofs/t2_monotonicity.md R6: scaling r and v by t leaves the CER gap unchanged and scales A by t."""
    lam, r, v = np.ones(2), np.array([1.0, 2.0]), np.array([0.0, 20.0])
    c = scale_c(BITS)
    for t in (0.5, 3.0):
        g1 = cer(1.0, BITS, c * v.sum()) - 16 / 3
        gt = cer(t * 1.0, BITS, c * t * v.sum()) - 16 / 3
        assert gt == pytest.approx(g1)
        assert advantage_marginal_k(lam, t * r, c[1] * t * v, 1) == pytest.approx(t * 11 / 9)


def test_local_one_scale_nonpositive():
    """proofs/t2_monotonicity.md (local reading) and proofs/harma.md H2: magnitude pruning on Q(w) with one
    shared absmax scale never beats prune-first: E[A(Q→P)] ≤ 0 and A ≤ 0 for every tie-break."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 12))
        w = np.round(rng.standard_normal(n), 1)
        k, bits = int(rng.integers(1, n)), int(rng.integers(2, 6))
        assert expected_local_advantage(w, bits, k) <= TOL
        qw = absmax_quantize(w, bits)
        lam, r, q = np.ones(n), w**2, (w - qw) ** 2
        s_pq = magnitude_prune_mask(w, k)
        for _ in range(3):
            s_qp = magnitude_prune_mask(qw, k, rng.permutation(n))
            assert advantage(lam, r, q, s_pq, s_qp) <= TOL


def test_r7_local_reading_not_monotone_in_bits():
    """proofs/t2_monotonicity.md R7: one absmax scale over n = 32 N(0,1) weights, k = 16: E[A] ≈ −0.01 at b = 2,
    −1.68 at b = 3, −0.26 at b = 4, −0.06 at b = 5: not monotone in b even in expectation (600 draws here)."""
    rng = np.random.default_rng(1)
    draws = [rng.standard_normal(32) for _ in range(600)]
    mean_a = np.array([np.mean([expected_local_advantage(w, b, 16) for w in draws]) for b in (2, 3, 4, 5)])
    assert mean_a[1] < mean_a[0] - 1.0
    assert mean_a[1] < mean_a[2] < mean_a[3] <= 0
    assert mean_a[1] == pytest.approx(-1.68, abs=0.2)


@given(st.floats(0, 10), st.floats(0, 10), st.floats(0, 10), st.floats(0.01, 3.0))
def test_t2_4_amplification_model(e_i, e_j, e_k, beta):
    """proofs/t2_monotonicity.md T2.4: with E(f_i then f_j) = β e_i + e_j, A(f_i→f_j) = (β − 1) G(f_i, f_j):
    increasing in the gap with its sign iff β > 1 (PIH), decreasing iff β < 1."""

    def a(x, y):  # A(f_x → f_y) = E(f_y first) − E(f_x first)
        return (beta * y + x) - (beta * x + y)

    assert a(e_i, e_j) == pytest.approx((beta - 1) * (e_j - e_i), abs=1e-9)
    if e_j - e_i > e_k - e_i + 1e-6:  # larger gap G(f_i, f_j) than G(f_i, f_k)
        if beta > 1.001:
            assert a(e_i, e_j) > a(e_i, e_k)
        elif beta < 0.999:
            assert a(e_i, e_j) < a(e_i, e_k)


def _exact_expectation(H, p, support, probs):
    """E[(p + ε)ᵀ H (p + ε)] for independent ε_j on the kept coordinates, each uniform on ``support``·probs."""
    from itertools import product

    kept = np.flatnonzero(p == 0)
    tot = 0.0
    for vals in product(range(len(support)), repeat=kept.size):
        eps = np.zeros_like(p)
        eps[kept] = [support[v] for v in vals]
        tot += np.prod([probs[v] for v in vals]) * float((p + eps) @ H @ (p + eps))
    return tot


@given(st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_a2b_cross_terms_vanish_in_expectation(n, seed):
    """proofs/t2_monotonicity.md Lemma A2b: with independent zero-mean symmetric quantization noise,
    E[δᵀHδ] = Σ_j H_jj E[δ_j²] + Σ_{j≠l pruned} w_j w_l H_jl (exact expectation by enumeration)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 7))
    H = X @ X.T
    w = rng.standard_normal(n)
    pruned = rng.random(n) < 0.5
    p = np.where(pruned, w, 0.0)
    a = float(rng.uniform(0.01, 0.5))
    e = _exact_expectation(H, p, [-a, a], [0.5, 0.5])
    diag = float(np.sum(np.diag(H) * np.where(pruned, w**2, a**2)))
    cross = float(p @ H @ p - np.sum(np.diag(H) * p**2))
    assert e == pytest.approx(diag + cross, rel=1e-9, abs=1e-12)


def test_a2b_dropped_biased_noise_breaks_a1():
    """proofs/t2_monotonicity.md Lemma A2b (A2b dropped): H = [[1, .9], [.9, 1]], two kept weights with
    round-down noise ε ∈ {0, −0.2}: E[δᵀHδ] = 0.058 while the A1 sum Σ H_jj E[ε_j²] = 0.04."""
    H = np.array([[1.0, 0.9], [0.9, 1.0]])
    e = _exact_expectation(H, np.zeros(2), [0.0, -0.2], [0.5, 0.5])
    assert e == pytest.approx(0.058)
    assert float(np.sum(np.diag(H) * 0.5 * 0.04)) == pytest.approx(0.04)


def test_a1_dropped_saturating_metric():
    """proofs/t2_monotonicity.md (A1 dropped): with M = exp(−E), r = (1, 2), v = (5, 20), k = 1, the marginal
    pruner (minimising the actual degradation) keeps A ≥ 0, but A = 0.0378 at b = 3 and 0.0009 at b = 2:
    T2.2's monotonicity fails for a saturating metric, while the additive A rises from 0.667 to 14."""
    lam, r, v = np.ones(2), np.array([1.0, 2.0]), np.array([5.0, 20.0])
    fam = k_subsets_masks(2, 1)
    out = []
    for b in (4, 3, 2):
        q = scale_c(b) * v
        s_pq = prune_first_set(lam, r, fam, np.arange(2))
        s_qp = quant_first_set_marginal(lam, r, q, fam, np.arange(2))  # also maximises exp(−E): monotone map
        e_pq, e_qp = total_error(s_pq, lam, r, q), total_error(s_qp, lam, r, q)
        out.append((np.exp(-e_qp) - np.exp(-e_pq), e_pq - e_qp))
    (m4, a4), (m3, a3), (m2, a2) = out
    assert m4 == 0.0 and a4 == 0.0
    assert (m3, m2) == pytest.approx((0.03778, 0.000912), abs=2e-5)
    assert (a3, a2) == pytest.approx((2 / 3, 14.0))
    assert m2 < m3 and a2 > a3


def _row_absmax(W, bits):
    L = 2 ** (bits - 1) - 1
    s = np.abs(W).max(axis=1, keepdims=True) / L
    return s * np.round(W / s)


def test_t2_2_real_rounding_on_average():
    """proofs/t2_monotonicity.md (T2.2 on real rounding, checked numerically): row units, per-row absmax RTN,
    A2a[phi], 8×16 Student-t(4) rows, k = 4: E[A] falls with b (≈ 1.04, 0.031, 0.0013 at b = 2, 3, 4) while a
    few percent of instances are not monotone in b."""
    rng = np.random.default_rng(0)
    As = []
    for _ in range(400):
        W = rng.standard_t(4, size=(8, 16))
        r, lam = (W**2).sum(1), np.ones(8)
        As.append([advantage_marginal_k(lam, r, ((W - _row_absmax(W, b)) ** 2).sum(1), 4) for b in range(2, 9)])
    As = np.array(As)
    mean = As.mean(0)
    assert (As >= -1e-12).all()
    assert mean[0] > 10 * mean[1] > 0 and mean[1] > 10 * mean[2] > 0 and (np.diff(mean) <= 1e-12).all()
    assert mean[0] == pytest.approx(1.04, rel=0.25)
    assert (np.diff(As, axis=1) > 1e-12).any(axis=1).mean() > 0.0


def test_t2_5_stochastic_rounding_monotone_in_expectation():
    """proofs/t2_monotonicity.md T2.5 (conjecture, checked numerically): with stochastic rounding, for fixed
    weights, the mean over rounding noise of A(Q→P) is nonincreasing in b (within 3 standard errors)."""
    rng = np.random.default_rng(0)

    def stoch(W, bits):
        L = 2 ** (bits - 1) - 1
        s = np.abs(W).max(axis=1, keepdims=True) / L
        x = W / s
        lo = np.floor(x)
        return s * (lo + (rng.random(W.shape) < x - lo))

    for _ in range(8):
        W = rng.standard_t(4, size=(8, 16))
        r, lam = (W**2).sum(1), np.ones(8)
        draws = np.array([[advantage_marginal_k(lam, r, ((W - stoch(W, b)) ** 2).sum(1), 4) for b in range(2, 9)]
                          for _ in range(60)])
        mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
        assert (draws >= -1e-12).all()
        assert (np.diff(mean) <= 3 * (se[1:] + se[:-1]) + 1e-12).all()
