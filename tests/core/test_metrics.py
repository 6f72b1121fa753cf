import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pih import PihError, QuantCurve, monotonicity, order_advantage, performance_gap

BITS = [2, 3, 4, 6, 8]


def known_curve(a, c):
    """A strictly decreasing performance curve in the ratio x = 16/b: M(x) = a − c·x."""
    x = 16 / np.asarray(BITS, float)
    return a - c * x


@given(st.floats(-100, 100), st.floats(0.01, 50), st.floats(0, 1))
def test_cer_inverts_a_known_curve(a, c, t):
    perf = known_curve(a, c)
    x = 16 / np.asarray(BITS, float)
    target_x = x.min() + t * (x.max() - x.min())
    cer = QuantCurve(BITS, perf).cer(a - c * target_x)
    assert cer.censored is None
    assert cer.value == pytest.approx(target_x, rel=1e-9, abs=1e-9)


def test_cer_of_measured_points_is_their_ratio():
    perf = [1.0, 5.0, 7.0, 7.9, 8.0]  # at bits 2, 3, 4, 6, 8 (higher is better)
    curve = QuantCurve(BITS, perf)
    for b, m in zip(BITS, perf, strict=True):
        assert curve.cer(m).value == pytest.approx(16 / b)


def test_cer_censoring_is_reported():
    curve = QuantCurve(BITS, known_curve(10, 1))
    weak = curve.cer(100.0)
    strong = curve.cer(-100.0)
    assert (weak.value, weak.censored, weak.bound) == (None, "weaker", 2.0)
    assert (strong.value, strong.censored, strong.bound) == (None, "stronger", 8.0)


def test_nonmonotone_curve_detected_and_isotonic_fit():
    perf = [1.0, 5.0, 4.0, 7.9, 8.0]  # at bits 2, 3, 4, 6, 8: 3 bits (5.0) measured better than 4 bits (4.0)
    curve = QuantCurve(BITS, perf)
    assert not curve.monotone
    assert curve.violations == [(4.0, 16 / 3)]
    amb = curve.cer(4.5)
    assert amb.ambiguous and len(amb.crossings) == 3
    iso = QuantCurve(BITS, perf, isotonic=True)
    assert np.all(np.diff(iso.y) <= 0)
    assert not iso.cer(4.5).ambiguous  # 4.5 is the pooled plateau: one crossing, at its mild end
    assert iso.cer(4.5).value == 4.0
    assert not iso.cer(4.2).ambiguous


def test_ratio_convention_is_a_parameter():
    perf = known_curve(10, 1)
    c16 = QuantCurve(BITS, perf).cer(8.0).value
    c32 = QuantCurve(BITS, perf, ratio=lambda b: 32 / np.asarray(b, float)).cer(8.0).value
    assert c16 is not None and c32 is not None and c32 != c16


@pytest.mark.parametrize(
    "bits, perf, arg",
    [([], [], "bits"), ([4], [1.0], "bits"), ([4, 8], [1.0], "perf"), ([4, 8], [1.0, np.nan], "perf"),
     ([4, 4], [1.0, 2.0], "bits")],
)
def test_bad_curves(bits, perf, arg):
    with pytest.raises(PihError, match=f"^{arg}="):
        QuantCurve(bits, perf)


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_advantage_is_antisymmetric(m_a, m_b):
    """A(f1->f2) = -A(f2->f1): swapping which method goes first negates the advantage."""
    assert order_advantage(m_a, m_b) == -order_advantage(m_b, m_a)
    assert performance_gap(m_a, m_b) == -performance_gap(m_b, m_a)


def test_advantage_round_off_is_zero_and_effects_are_not():
    """Two measurements equal but for round-off give A = 0 exactly (no sign read from the last digits); a difference
    a hundred times the round-off floor is kept as measured."""
    from pih.metrics import ROUNDOFF

    assert order_advantage(2.0 * (1 + 30 * np.finfo(float).eps), 2.0) == 0.0
    assert order_advantage(-3.0, -3.0 * (1 + ROUNDOFF / 2)) == 0.0
    big = 2.0 * (1 + 100 * ROUNDOFF)
    assert order_advantage(big, 2.0) == big - 2.0 > 0
    assert order_advantage(1.0 + 1e-9, 1.0) > 0  # a billionth of the metric is measured, not round-off
    assert order_advantage(1e-20, 0.0) == 1e-20  # relative: nothing is round-off against an exact zero
    assert np.isnan(order_advantage(float("nan"), 1.0))


def test_monotonicity_statistics():
    x = np.arange(10.0)
    up = monotonicity(x, x**2, n_boot=200)
    assert up.rho == pytest.approx(1.0) and up.concordant_fraction == 1.0 and up.n_violations == 0
    down = monotonicity(x, -x, n_boot=200)
    assert down.rho == pytest.approx(-1.0) and down.n_violations == 45
    y = x.copy()
    y[[3, 7]] = y[[7, 3]]
    mixed = monotonicity(x, y, n_boot=200, seed=1)
    assert 0 < mixed.concordant_fraction < 1
    assert (3, 7) in mixed.violating_pairs
    assert mixed.rho_ci[0] <= mixed.rho <= mixed.rho_ci[1]
    again = monotonicity(x, y, n_boot=200, seed=1)
    assert again.rho_ci == mixed.rho_ci


@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=3, max_size=40))
def test_monotonicity_counts_are_consistent(pts):
    x, y = map(np.array, zip(*pts, strict=True))
    assume(np.ptp(x) > 0)
    m = monotonicity(x, y, n_boot=20)
    for i, j in m.violating_pairs:
        assert x[i] < x[j] and y[i] > y[j]
    assert m.n_violations <= m.n_pairs


def test_monotonicity_sampled_pairs_when_large():
    rng = np.random.default_rng(0)
    x = rng.random(3000)
    m = monotonicity(x, x + 0.1 * rng.random(3000), n_boot=10, max_pairs=100_000)
    assert not m.exact_pairs and m.concordant_fraction > 0.8


def test_ties_in_y_are_neither_concordant_nor_violating():
    """x = 1..4, y = (1, 1, 2, 2): of the 6 pairs 4 are concordant, 2 tied (twin killed: ties counted concordant)."""
    m = monotonicity([1, 2, 3, 4], [1.0, 1.0, 2.0, 2.0], n_boot=10)
    assert m.n_pairs == 6 and m.concordant_fraction == pytest.approx(4 / 6) and m.n_violations == 0
