"""Checks of proofs/n_methods.md: when sorting n methods by intensity is optimal, and counterexamples."""

from __future__ import annotations

from itertools import combinations, permutations

import numpy as np
import pytest
from hypothesis import example, find, given, settings
from hypothesis import strategies as st

from pih import predicted_order, search_orders
from pih.order import unit_model_error

# ------------------------------------------------------------------------------------ abstract order models


def pair_score(order, w):
    """PAIR: M(π) = Σ_{i before j} w[i, j]."""
    return float(sum(w[order[a], order[b]] for a, b in combinations(range(len(order)), 2)))


def inversions(order, c):
    """The set of pairs placed stronger-before-weaker (by intensity c)."""
    return frozenset((order[a], order[b]) for a, b in combinations(range(len(order)), 2)
                     if c[order[a]] > c[order[b]])


@st.composite
def consistent_pair_models(draw, n_max=5):
    """Intensities (distinct) and pairwise weights obeying pairwise PIH: w[i,j] ≥ w[j,i] when c_i < c_j."""
    n = draw(st.integers(2, n_max))
    c = np.array(draw(st.permutations(range(n))), dtype=float)
    w = np.zeros((n, n))
    for i, j in combinations(range(n), 2):
        lo, hi = (i, j) if c[i] < c[j] else (j, i)
        base = draw(st.integers(-5, 5))
        gain = draw(st.integers(0, 5))
        w[lo, hi], w[hi, lo] = base + gain, base
    return c, w


@given(consistent_pair_models(), st.lists(st.integers(0, 5), min_size=10, max_size=10), st.booleans())
def test_n1_adjacent_exchange_sorted_optimal(model, pen, squared):
    """proofs/n_methods.md N1: any M satisfying ADJ is maximised by the sorted order. Built as PAIR-consistent
    weights plus a non-pairwise penalty h(Inv(π)) nonincreasing in the inversion set (ADJ holds)."""
    c, w = model
    n = len(c)
    pairs = list(combinations(range(n), 2))
    cost = {p: pen[k % len(pen)] for k, p in enumerate(pairs)}

    def h(inv):
        tot = sum(cost[tuple(sorted(p))] for p in inv)
        return -(tot**2) if squared else -max([0] + [cost[tuple(sorted(p))] for p in inv])

    def m(order):
        return pair_score(order, w) + h(inversions(order, c))

    # ADJ holds by construction; verify it on every order, then the conclusion
    for o in permutations(range(n)):
        for t in range(n - 1):
            if c[o[t]] > c[o[t + 1]]:
                sw = list(o)
                sw[t], sw[t + 1] = sw[t + 1], sw[t]
                assert m(tuple(sw)) >= m(o) - 1e-12
    res = search_orders(list(range(n)), m, cers=list(c), progress=False)
    assert res.predicted == predicted_order(list(range(n)), list(c))
    assert res.regret == pytest.approx(0.0, abs=1e-12)


@given(consistent_pair_models())
def test_n2_pairwise_consistent_sorted_optimal(model):
    """proofs/n_methods.md N2(a): under PAIR with pairwise PIH for every pair, the sorted order is optimal."""
    c, w = model
    res = search_orders(list(range(len(c))), lambda o: pair_score(o, w), cers=list(c), progress=False)
    assert res.regret == pytest.approx(0.0, abs=1e-12)


@given(consistent_pair_models(), st.data())
def test_n2_adjacent_violation_not_optimal(model, data):
    """proofs/n_methods.md N2(b): breaking PIH on a pair adjacent in σ makes σ strictly suboptimal."""
    c, w = model
    sigma = [int(i) for i in np.argsort(c)]
    t = data.draw(st.integers(0, len(c) - 2))
    i, j = sigma[t], sigma[t + 1]
    w = w.copy()
    w[i, j], w[j, i] = w[j, i] - 1.0, w[i, j]  # now A(f_i → f_j) < 0
    res = search_orders(list(range(len(c))), lambda o: pair_score(o, w), cers=list(c), progress=False)
    assert res.regret > 0


@st.composite
def free_pair_models(draw):
    n = draw(st.integers(3, 4))
    c = np.arange(n, dtype=float)
    w = np.array(draw(st.lists(st.integers(0, 3), min_size=n * n, max_size=n * n)), dtype=float).reshape(n, n)
    return c, w


def _regret(model):
    c, w = model
    return search_orders(list(range(len(c))), lambda o: pair_score(o, w), cers=list(c), progress=False).regret


@given(free_pair_models())
@example((np.arange(3.0), np.array([[0.0, 0, 0], [0, 0, 0], [0, 1, 0]])))  # hypothesis.find's shrunk example
def test_n2_regret_needs_a_pih_violation(model):
    """proofs/n_methods.md N2(a), contrapositive: under PAIR, σ has positive regret only if some pair violates
    pairwise PIH. Pinned: the shrunk counterexample w_32 = 1 (regret 1, pair (2, 3) violated)."""
    c, w = model
    if _regret(model) > 1e-12:
        n = len(c)
        assert any(w[i, j] < w[j, i] for i in range(n) for j in range(n) if c[i] < c[j])


def test_n2_hypothesis_finds_counterexample_without_pairwise_pih():
    """proofs/n_methods.md N2/C1: dropping pairwise PIH, hypothesis finds a PAIR model where σ is not optimal."""
    found = find(free_pair_models(), lambda m: _regret(m) > 0,
                 settings=settings(max_examples=2000, derandomize=True, database=None))
    assert _regret(found) > 0


def test_c1_intransitive():
    """proofs/n_methods.md C1: w12 = w23 = 1, w31 = 3: M(σ) = 2, best 4 at (3,1,2) and (2,3,1); and the
    non-adjacent violation w12 = w23 = 5, w31 = 1 keeps σ optimal (10 vs ≤ 6)."""
    w = np.zeros((3, 3))
    w[0, 1], w[1, 2], w[2, 0] = 1, 1, 3
    res = search_orders([0, 1, 2], lambda o: pair_score(o, w), cers=[0, 1, 2], progress=False)
    assert res.scores[(0, 1, 2)] == 2 and res.scores[(2, 0, 1)] == 4 and res.scores[(1, 2, 0)] == 4
    assert res.regret == 2
    w2 = np.zeros((3, 3))
    w2[0, 1], w2[1, 2], w2[2, 0] = 5, 5, 1
    res2 = search_orders([0, 1, 2], lambda o: pair_score(o, w2), cers=[0, 1, 2], progress=False)
    assert res2.scores[(0, 1, 2)] == 10 and max(v for k, v in res2.scores.items() if k != (0, 1, 2)) == 6


# ------------------------------------------------------------------------------------ the unit model (N3)
# (pih.order.unit_model_error: the one definition the proofs' tests and the verdict table use)


@given(st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_n3_pruner_last_optimal(n, m, seed):
    """proofs/n_methods.md N3: with one pruner and quantizers on disjoint unit sets, every order with the
    pruner last attains the minimum error over all orders, and it equals min_S E(S)."""
    rng = np.random.default_rng(seed)
    lam, r, q = rng.exponential(size=(3, n))
    owner = rng.integers(0, m, size=n)
    k = int(rng.integers(0, n + 1))
    methods = ["P", *range(m)]
    errs = {o: unit_model_error(o, lam, r, q, owner, k) for o in permutations(methods)}
    best = min(errs.values())
    e_all = lambda s: (lam * r)[s].sum() + (lam * q)[~s].sum()
    brute = min(e_all(np.isin(np.arange(n), c)) for c in combinations(range(n), k))
    assert best == pytest.approx(brute, abs=1e-12)
    for o, e in errs.items():
        if o[-1] == "P":
            assert e == pytest.approx(best, abs=1e-12)


def test_c2_unit_model_pairwise_fails():
    """proofs/n_methods.md C2: r = (1, 5, 1.2, 5), Q_a: q = (0, 0.5) on units 1–2, Q_b: q = (1, 1) on 3–4, k = 1:
    σ = (Q_a, P, Q_b) gives 3.5, (Q_a, Q_b, P) gives 2.7 (regret 0.8); A(Q_b→P) = 0.8 alone."""
    lam, r, q = np.ones(4), np.array([1, 5, 1.2, 5]), np.array([0, 0.5, 1, 1])
    owner = np.array([0, 0, 1, 1])
    intens = {"P": 1.0, 0: 0.5, 1: 2.0}
    res = search_orders(["P", 0, 1], lambda o: -unit_model_error(o, lam, r, q, owner, 1),
                        cers=[intens["P"], intens[0], intens[1]], progress=False)
    assert res.predicted == (0, "P", 1)
    assert -res.scores[(0, "P", 1)] == pytest.approx(3.5) and -res.scores[(0, 1, "P")] == pytest.approx(2.7)
    assert res.regret == pytest.approx(0.8)
    only_b = np.where(owner == 1, q, 0.0)
    a = unit_model_error(("P", 1), lam, r, only_b, owner, 1) - unit_model_error((1, "P"), lam, r, only_b, owner, 1)
    assert a == pytest.approx(0.8)


def test_c3_pairwise_holds_sorted_loses():
    """proofs/n_methods.md C3: r = (1, 5, 1.5), Q_x: q3 = 0.8, Q_y: q = (0.9, 0.9) on units 1–2, k = 1: every
    pair alone obeys pairwise PIH (A(Q_x→P) = 0.3, A(P→Q_y) = 0), yet σ = (Q_x, P, Q_y) gives 3.3 vs 2.7."""
    lam, r, q = np.ones(3), np.array([1.0, 5.0, 1.5]), np.array([0.9, 0.9, 0.8])
    owner = np.array([1, 1, 0])  # 0 = Q_x, 1 = Q_y
    intens = {0: 0.8, "P": 1.0, 1: 1.8}

    def e(order):
        used = [f for f in order if f != "P"]
        qq = np.where(np.isin(owner, used), q, 0.0)
        return unit_model_error(order, lam, r, qq, owner, 1)

    assert e(("P", 0)) - e((0, "P")) == pytest.approx(0.3)  # A(Q_x→P): weaker first wins
    assert e((1, "P")) - e(("P", 1)) == pytest.approx(0.0)  # A(P→Q_y) = 0
    assert e((0, 1)) == e((1, 0))
    res = search_orders(["P", 0, 1], lambda o: -e(o), cers=[intens["P"], intens[0], intens[1]], progress=False)
    assert res.predicted == (0, "P", 1)
    assert -res.scores[(0, "P", 1)] == pytest.approx(3.3) and -res.scores[(0, 1, "P")] == pytest.approx(2.7)
    assert res.regret == pytest.approx(0.6)


@given(st.lists(st.floats(0, 10), min_size=2, max_size=5), st.floats(0.2, 3.0))
def test_n4_position_weights(errs, beta):
    """proofs/n_methods.md N4: with E(π) = Σ_t β^(n−t) e_π(t), weakest-first is optimal for β ≥ 1 and
    strongest-first for β ≤ 1, and the regret of σ for β < 1 is Σ_t (a_t − a_(n+1−t)) e_(t)."""
    e = np.array(errs)
    n = e.size
    a = beta ** (n - 1 - np.arange(n))
    res = search_orders(list(range(n)), lambda o: -float(a @ e[list(o)]), cers=list(e), progress=False)
    best = -max(res.scores.values())
    e_sorted = np.sort(e)
    e_sigma = float(a @ e_sorted)
    e_rev = float(a @ e_sorted[::-1])
    if beta >= 1:
        assert e_sigma == pytest.approx(best, abs=1e-9)
    if beta <= 1:
        assert e_rev == pytest.approx(best, abs=1e-9)
        assert res.regret == pytest.approx(float(np.sum((a - a[::-1]) * e_sorted)), abs=1e-9)
