"""Checks of proofs/t1_ownership.md: the ownership identity, its corollaries, and what fails without DS or A1."""

from __future__ import annotations

import numpy as np
import pytest
from _proofs_model import absmax_quantize, advantage_marginal_k, k_subsets_masks, prune_first_set, total_error
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pih import direct_advantage, theorem1

finite = st.floats(0.0, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def owner_problems(draw):
    n_m = draw(st.integers(1, 4))
    n_u = draw(st.integers(1, 30))
    errors = draw(hnp.arrays(np.float64, (n_m, n_u), elements=finite))
    own = st.integers(-1, n_m - 1)
    a = np.array(draw(st.lists(own, min_size=n_u, max_size=n_u)), dtype=np.int64)
    b = np.array(draw(st.lists(own, min_size=n_u, max_size=n_u)), dtype=np.int64)
    lam = draw(hnp.arrays(np.float64, (n_u,), elements=st.floats(0.0, 10.0)))
    return errors, a, b, lam


def _carried(errors, owners):
    return np.array([0.0 if o < 0 else errors[o, u] for u, o in enumerate(owners)])


@given(owner_problems())
def test_t1_identity_random_owner_maps(prob):
    """proofs/t1_ownership.md T1: A(f1→f2) = Σ_{a_u≠b_u} λ_u (e[b_u,u] − e[a_u,u]) equals the full A1 difference,
    for pih.theorem1, pih.direct_advantage and an independent sum, to floating-point precision."""
    errors, a, b, lam = prob
    full = float(lam @ _carried(errors, b) - lam @ _carried(errors, a))
    dec = theorem1(errors, a, b, lam)
    changed = a != b
    mine = float(np.sum((lam * (_carried(errors, b) - _carried(errors, a)))[changed]))
    scale = 1.0 + float(lam @ (_carried(errors, a) + _carried(errors, b)))
    assert dec.advantage == pytest.approx(full, abs=1e-12 * scale)
    assert direct_advantage(errors, a, b, lam) == pytest.approx(full, abs=1e-12 * scale)
    assert mine == pytest.approx(full, abs=1e-12 * scale)
    assert dec.n_changed == int(changed.sum())
    assert (dec.terms[~changed] == 0).all()


@given(owner_problems())
def test_t1_1_no_owner_change(prob):
    """proofs/t1_ownership.md T1.1: identical owner maps give A = 0 exactly, whatever the errors."""
    errors, a, _, lam = prob
    assert theorem1(errors, a, a.copy(), lam).advantage == 0.0
    assert direct_advantage(errors, a, a.copy(), lam) == 0.0


def _row_prune(W_seen, W0, k, rule):
    """A row pruner (any rule): returns the boolean mask of the k removed rows."""
    if rule == "magnitude_seen":
        score = (W_seen**2).sum(1)
    elif rule == "phi":  # A2a[phi]: removal error of the original row minus what the row already carries
        score = (W0**2).sum(1) - ((W0 - W_seen) ** 2).sum(1)
    else:  # an arbitrary fixed rule
        score = -np.arange(W0.shape[0], dtype=float)
    m = np.zeros(W0.shape[0], bool)
    m[np.argsort(score, kind="stable")[:k]] = True
    return m


def _quant_rows(W, bits):
    return np.stack([absmax_quantize(row, bits) for row in W])


@given(
    st.integers(2, 8), st.integers(2, 12), st.integers(2, 6), st.sampled_from(["magnitude_seen", "phi", "fixed"]),
    st.integers(0, 2**31 - 1),
)
def test_t1_end_to_end_row_units(n_rows, n_in, bits, rule, seed):
    """proofs/t1_ownership.md T1 end to end: one linear layer, units = output rows (A1 exact: row output errors
    are orthogonal), row pruning + per-row absmax quantization (DS), both orders computed on the weights."""
    rng = np.random.default_rng(seed)
    W0 = rng.standard_normal((n_rows, n_in))
    X = rng.standard_normal((n_in, 16))
    k = int(rng.integers(0, n_rows))

    def out_err(Wc):
        return ((Wc - W0) @ X) ** 2

    # P first: prune on φ, then quantize the kept rows
    m_pq = _row_prune(W0, W0, k, rule)
    W_pq = _quant_rows(np.where(m_pq[:, None], 0.0, W0), bits)
    # Q first: quantize, then prune on the quantized model
    Wq = _quant_rows(W0, bits)
    m_qp = _row_prune(Wq, W0, k, rule)
    W_qp = np.where(m_qp[:, None], 0.0, Wq)
    assert (W_pq[m_pq] == 0).all()  # quantization keeps the sparsity mask
    actual = out_err(W_pq).sum() - out_err(W_qp).sum()  # A(Q→P) = M(Q first) − M(P first)
    errors = np.stack([out_err(np.zeros_like(W0)).sum(1), out_err(Wq).sum(1)])  # rows: P, Q
    owners_q_first = np.where(m_qp, 0, 1)
    owners_p_first = np.where(m_pq, 0, 1)
    dec = theorem1(errors, owners_q_first, owners_p_first)  # f1 = Q, f2 = P
    assert dec.advantage == pytest.approx(actual, rel=1e-9, abs=1e-9)


def test_t1_2_pruned_sets():
    """proofs/t1_ownership.md T1.2: A(Q→P) = Σ_{S_PQ∖S_QP} d − Σ_{S_QP∖S_PQ} d, with an even number of changes."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        lam, r, q = rng.exponential(size=(3, n))
        k = int(rng.integers(0, n + 1))
        s_pq = np.zeros(n, bool)
        s_pq[np.argsort(lam * r)[:k]] = True
        s_qp = np.zeros(n, bool)
        s_qp[np.argsort(lam * (r - q))[:k]] = True
        d = lam * (r - q)
        formula = d[s_pq & ~s_qp].sum() - d[s_qp & ~s_pq].sum()
        assert total_error(s_pq, lam, r, q) - total_error(s_qp, lam, r, q) == pytest.approx(formula, abs=1e-12)
        assert (s_pq != s_qp).sum() % 2 == 0


def test_t1_3_mild_quantization_keeps_owners():
    """proofs/t1_ownership.md T1.3: when max_S Q(S) − Q(S_PQ) < δ (the pruning margin), S_QP = S_PQ and A = 0."""
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(2, 7))
        k = int(rng.integers(1, n))
        lam, r, v = rng.exponential(size=(3, n))
        fam = k_subsets_masks(n, k)
        R = np.array([(lam * r)[m].sum() for m in fam])
        V = np.array([(lam * v)[m].sum() for m in fam])
        i0 = int(np.argmin(R))
        delta = np.sort(R)[1] - R[i0]
        c = 0.99 * delta / max((V - V[i0]).max(), 1e-300)
        s_pq = prune_first_set(lam, r, fam, np.arange(len(fam)))
        s_qp = prune_first_set(lam, r - c * v, fam, np.arange(len(fam)))
        assert (s_pq == s_qp).all()
        assert advantage_marginal_k(lam, r, c * v, k) == pytest.approx(0.0, abs=1e-12)


def test_without_ds_no_owner_change_but_nonzero():
    """proofs/t1_ownership.md (DS dropped): w = (3.0, 1.2, 0.5), one 3-bit absmax group, unit 0 pruned in both
    orders: Q first 9.29, P first 9.01, A(Q→P) = −0.28 with no owner change."""
    w = np.array([3.0, 1.2, 0.5])
    qw = absmax_quantize(w, 3)
    assert qw == pytest.approx([3.0, 1.0, 0.0])
    e_qp = float(((w - np.array([0.0, qw[1], qw[2]])) ** 2).sum())
    w_p = absmax_quantize(np.array([0.0, 1.2, 0.5]), 3)
    assert w_p == pytest.approx([0.0, 1.2, 0.4])
    e_pq = float(((w - w_p) ** 2).sum())
    assert (e_qp, e_pq) == pytest.approx((9.29, 9.01))
    assert e_pq - e_qp == pytest.approx(-0.28)
    errors = np.stack([w**2, (w - qw) ** 2])
    owners = np.array([0, 1, 1])
    assert theorem1(errors, owners, owners).advantage == 0.0  # what T1 would predict


def test_without_a1_identity_fails():
    """proofs/t1_ownership.md (A1 dropped): correlated inputs H = [[1, .9], [.9, 1]], w = (1, 1), ε = (.1, −.1):
    true A(Q→P) = 0.83 − 1.19 = −0.36, T1 with λ = diag H predicts 0."""
    H = np.array([[1.0, 0.9], [0.9, 1.0]])
    w, eps = np.array([1.0, 1.0]), np.array([0.1, -0.1])
    d_pq = np.array([w[0], eps[1]])  # P first prunes weight 0
    d_qp = np.array([eps[0], w[1]])  # Q first prunes weight 1
    e_pq, e_qp = d_pq @ H @ d_pq, d_qp @ H @ d_qp
    assert (e_pq, e_qp) == pytest.approx((0.83, 1.19))
    errors = np.stack([w**2, eps**2])
    pred = theorem1(errors, np.array([1, 0]), np.array([0, 1]), np.diag(H)).advantage
    assert pred == pytest.approx(0.0) and e_pq - e_qp == pytest.approx(-0.36)
