"""Checks of proofs/interference.md: interference when t_P < t_Q, and the mixed-precision corollary."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest
from _proofs_model import absmax_quantize, advantage_marginal_k, scale_c
from hypothesis import given
from hypothesis import strategies as st

from pih import interference, theorem1


@st.composite
def blocked(draw):
    n_blocks = draw(st.integers(1, 5))
    g = draw(st.sampled_from([2, 4, 8]))
    n = n_blocks * g
    w = np.array(draw(st.lists(st.integers(-30, 30), min_size=n, max_size=n))) / 10.0
    lam = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), dtype=float)
    bits = draw(st.integers(2, 6))
    s_pq = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    s_qp = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return w, lam, g, bits, s_pq, s_qp


def _orders(w, g, bits, s_pq, s_qp):
    qw = absmax_quantize(w, bits, g)
    w_pq = absmax_quantize(np.where(s_pq, 0.0, w), bits, g)  # prune first (any pruner), then quantize
    w_qp = np.where(s_qp, 0.0, qw)  # quantize first, then zero entries (FROZEN-Q)
    return qw, w_pq, w_qp


@given(blocked())
def test_i1_additivity_identity(inst):
    """proofs/interference.md I.1: A_act(Q→P) = A_dis + Δ_PQ − Δ_QP (pih.interference, pih.theorem1)."""
    w, lam, g, bits, s_pq, s_qp = inst
    qw, w_pq, w_qp = _orders(w, g, bits, s_pq, s_qp)
    errors = np.stack([w**2, (w - qw) ** 2])  # method 0 = P, 1 = Q, computed on φ
    own_pq, own_qp = np.where(s_pq, 0, 1), np.where(s_qp, 0, 1)
    d_pq = interference((w - w_pq) ** 2, own_pq, errors, lam)
    d_qp = interference((w - w_qp) ** 2, own_qp, errors, lam)
    a_act = float(lam @ (w - w_pq) ** 2 - lam @ (w - w_qp) ** 2)
    a_dis = theorem1(errors, own_qp, own_pq, lam).advantage  # f1 = Q, f2 = P
    assert a_act == pytest.approx(a_dis + d_pq - d_qp, abs=1e-9)


@given(blocked())
def test_i2_quantize_first_no_interference(inst):
    """proofs/interference.md I.2: under FROZEN-Q the quantize-first order has Δ_QP = 0 for any pruner."""
    w, lam, g, bits, _, s_qp = inst
    qw = absmax_quantize(w, bits, g)
    errors = np.stack([w**2, (w - qw) ** 2])
    w_qp = np.where(s_qp, 0.0, qw)
    assert interference((w - w_qp) ** 2, np.where(s_qp, 0, 1), errors, lam) == pytest.approx(0.0, abs=1e-12)


def _noise_delta(w, lam, g, bits, s):
    """Δ_PQ under NOISE: kept weights carry λ s_B²/12 with s_B from the block the quantizer sees."""
    L = 2 ** (bits - 1) - 1
    tot = 0.0
    for i in range(0, w.size, g):
        x, m, lm = w[i : i + g], s[i : i + g], lam[i : i + g]
        if m.all():
            continue
        s_before = np.abs(x).max() / L
        s_after = np.abs(x[~m]).max() / L
        tot += lm[~m].sum() * (s_after**2 - s_before**2) / 12
    return tot


def _noise_D(w, lam, g, s):
    tot = 0.0
    for i in range(0, w.size, g):
        x, m, lm = w[i : i + g], s[i : i + g], lam[i : i + g]
        if m.all():
            continue
        tot += lm[~m].sum() * (np.abs(x[~m]).max() ** 2 - np.abs(x).max() ** 2) / 12
    return tot


@given(blocked())
def test_i4_noise_model_factorises(inst):
    """proofs/interference.md I.4: under NOISE, Δ_PQ(b) = c(b)·D(S) with D ≤ 0 independent of b."""
    w, lam, g, _, s, _ = inst
    d = _noise_D(w, lam, g, s)
    assert d <= 1e-12
    for bits in range(2, 9):
        assert _noise_delta(w, lam, g, bits, s) == pytest.approx(scale_c(bits) * d, abs=1e-12)


def test_i4_large_tensor_approximation():
    """proofs/interference.md I.4 (checked numerically): 8192 N(0,1) weights, blocks of 64, a fixed random half
    pruned: actual Δ_PQ(b)/c(b) is within 20% of D (= −368) for b = 2..10, and Δ_PQ < 0 throughout."""
    rng = np.random.default_rng(0)
    n, g = 8192, 64
    w = rng.standard_normal(n)
    s = rng.random(n) < 0.5
    lam = np.ones(n)
    d = _noise_D(w, lam, g, s)
    assert d == pytest.approx(-367.75, abs=0.01)
    for bits in range(2, 11):
        qw = absmax_quantize(w, bits, g)
        qpw = absmax_quantize(np.where(s, 0.0, w), bits, g)
        delta = ((w - qpw) ** 2).sum() - ((w[s] ** 2).sum() + ((w - qw)[~s] ** 2).sum())
        assert delta < 0
        assert 0.8 <= delta / scale_c(bits) / d <= 1.2


def test_i5_interference_breaks_monotonicity():
    """proofs/interference.md I.5: r = (1, 2), v = (0, 20), k = 1, D = −2: A_act along b = 8..2 is
    −0.000124, −0.000504, −0.00208, −0.00889, −0.0408, +1.000, +17.0: not monotone, one sign change."""
    lam, r, v, D = np.ones(2), np.array([1.0, 2.0]), np.array([0.0, 20.0]), -2.0
    bits = np.arange(8, 1, -1)
    c = scale_c(bits)
    a = np.array([advantage_marginal_k(lam, r, cc * v, 1) + cc * D for cc in c])
    assert a == pytest.approx([-0.000124, -0.000504, -0.002081, -0.008889, -0.040816, 1.0, 17.0], abs=2e-6)
    assert np.sign(a).tolist() == [-1, -1, -1, -1, -1, 1, 1]


@given(st.lists(st.floats(0, 5), min_size=1, max_size=5), st.lists(st.floats(0, 5), min_size=1, max_size=5),
       st.floats(-3, 0))
def test_i5_convex_and_negative_before_c0(r_list, v_list, D):
    """proofs/interference.md I.5: A_act(c) = A_dis(c) + cD is convex, A_act(0) = 0, and A_act ≤ cD·1 on the
    zero set of A_dis (so < 0 there when D < 0)."""
    n = min(len(r_list), len(v_list))
    r, v, lam = np.array(r_list[:n]), np.array(v_list[:n]), np.ones(n)
    cs = np.linspace(0, 4, 41)
    for k in range(n + 1):
        a_dis = np.array([advantage_marginal_k(lam, r, c * v, k) for c in cs])
        a_act = a_dis + cs * D
        assert a_act[0] == 0.0
        assert (np.diff(a_act, 2) >= -1e-7).all()
        zero = a_dis <= 1e-12
        assert (a_act[zero] <= cs[zero] * D + 1e-12).all()


@given(st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_mp1_mixed_precision_orders_tie(n_layers, seed):
    """proofs/interference.md MP.1: quantizers on disjoint layers (one bit width each) commute: every order
    gives the identical model, Δ = 0 and A = 0 (pih.theorem1 with fixed owners)."""
    rng = np.random.default_rng(seed)
    layers = [rng.standard_normal(int(rng.integers(1, 9))) for _ in range(n_layers)]
    bits = [int(b) for b in rng.integers(2, 9, size=n_layers)]

    def apply(order):
        out = [x.copy() for x in layers]
        for i in order:
            out[i] = absmax_quantize(out[i], bits[i])
        return np.concatenate(out)

    results = [apply(o) for o in permutations(range(n_layers))]
    assert all(np.array_equal(results[0], x) for x in results)
    owners = np.concatenate([np.full(x.size, i) for i, x in enumerate(layers)])
    w = np.concatenate(layers)
    errors = np.stack([np.where(owners == i, (w - results[0]) ** 2, 0.0) for i in range(n_layers)])
    assert theorem1(errors, owners, owners).advantage == 0.0
    assert interference((w - results[0]) ** 2, owners, errors) == pytest.approx(0.0, abs=1e-15)


def test_mp2_compensation_reverses_progressive():
    """proofs/interference.md MP.2: compensation model E(i then j) = (1 − γ) e_i + e_j, e_8b = 0.01, e_4b = 0.2,
    γ = 0.5: high-bits-first 0.205, low-bits-first 0.11: the reverse of the progressive order wins."""
    e8, e4, gamma = 0.01, 0.2, 0.5
    high_first = (1 - gamma) * e8 + e4
    low_first = (1 - gamma) * e4 + e8
    assert (high_first, low_first) == pytest.approx((0.205, 0.11))
    assert low_first < high_first


@given(blocked())
def test_i4_prime_deterministic_bound(inst):
    """proofs/interference.md I.4′: for absmax blocks and any prune-first set S,
    |Δ_PQ(b)| ≤ (1/4L²) Σ_B m_B² Σ_{u∈B∖S} λ_u = 3 c(b) V_kept(S)."""
    w, lam, g, bits, s, _ = inst
    L = 2 ** (bits - 1) - 1
    qw = absmax_quantize(w, bits, g)
    qpw = absmax_quantize(np.where(s, 0.0, w), bits, g)
    delta = float(lam @ ((w - qpw) ** 2) - (lam[s] @ (w[s] ** 2) + lam[~s] @ ((w - qw)[~s] ** 2)))
    bound = 0.0
    for i in range(0, w.size, g):
        m = np.abs(w[i : i + g]).max()
        bound += m**2 * lam[i : i + g][~s[i : i + g]].sum() / (4 * L**2)
    assert abs(delta) <= bound + 1e-12
