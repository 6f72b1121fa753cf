"""The statistics every claim rests on: noise floor over seeds, exact permutation tests per line, cluster bootstrap
for pooled figures, and the seed-level grid summary. Each test names the broken twin it kills."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_analysis import grid

from pih import PihError
from pih.analysis import analyze_grid
from pih.stats import ONE_SEED, cluster_bootstrap, noise_floor, permutation_test, seed_stat, spearman


def test_noise_floor_is_two_sample_sd():
    """Twin killed: ddof = 0 (population sd) or 1 x sd."""
    v = [1.0, 2.0, 4.0]
    assert noise_floor(v) == pytest.approx(2 * np.std(v, ddof=1))
    assert noise_floor(v) != pytest.approx(2 * np.std(v, ddof=0))
    assert noise_floor([3.0]) is None
    with pytest.raises(PihError):
        noise_floor([1.0, float("nan")])


def test_seed_stat_above_and_sign():
    s = seed_stat([1.0, 1.1, 0.9])
    assert s.above and s.sign == 1
    s = seed_stat([1.0, -1.0, 0.5])
    assert s.above is False and s.sign == 0  # not decidable at this size
    s = seed_stat([2.0])
    assert s.above is None and s.floor is None and s.sign == 0


def test_permutation_test_exact_p_values():
    """n = 4 strictly increasing: the exact one-sided p is 1/4! (twins killed: strict > in the count gives 0; a
    normal approximation gives another number)."""
    t = permutation_test([1, 2, 3, 4], [0.1, 0.5, 0.7, 2.0])
    assert t.exact and t.rho == pytest.approx(1.0)
    assert t.p_increasing == pytest.approx(1 / 24)
    assert t.p_decreasing == pytest.approx(1.0)
    assert t.p_two_sided == pytest.approx(2 / 24)
    assert t.direction() == "increasing"
    # three points can never reach p <= 0.05: not decidable at this size, whatever the data
    t3 = permutation_test([1, 2, 3], [3.0, 2.0, 1.0])
    assert t3.min_p == pytest.approx(1 / 6) and t3.direction() == "not decidable"


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=4, max_size=6, unique=True))
def test_permutation_null_is_uniform_over_orderings(y):
    """The exact null counts every ordering once: p_increasing + p_decreasing = 1 + P(ρ_perm = ρ)."""
    x = list(range(len(y)))
    t = permutation_test(x, y)
    n = math.factorial(len(y))
    assert t.p_increasing * n == pytest.approx(round(t.p_increasing * n))
    assert t.p_increasing + t.p_decreasing >= 1.0 - 1e-12


def test_permutation_monte_carlo_above_eight_points():
    x = np.arange(12.0)
    t = permutation_test(x, x**2)
    assert not t.exact and t.p_increasing < 0.001 and t.direction() == "increasing"


def test_permutation_null_is_pearson_of_the_ranks_per_drawn_permutation():
    """The Monte Carlo null is, per permutation drawn from the seed's generator, Pearson's r between x's ranks and
    the permuted ranks of y (ties averaged): the p-values equal a one-by-one np.corrcoef over the same draws
    (twins killed: a denominator or centring that ignores ties, another draw than rng.permutation)."""
    from scipy import stats as sst

    from pih import stats as S

    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=15), 1)
    y = np.round(x + rng.normal(size=15), 0)  # ties in both
    t = permutation_test(x, y, seed=7)
    rx, ry = sst.rankdata(x), sst.rankdata(y)
    draw = np.random.default_rng(7)
    null = np.array([np.corrcoef(rx, draw.permutation(ry))[0, 1] for _ in range(S.N_PERM)])
    assert t.p_increasing == pytest.approx((1 + np.sum(null >= t.rho - 1e-12)) / (S.N_PERM + 1), abs=1e-12)
    assert t.p_two_sided == pytest.approx((1 + np.sum(np.abs(null) >= abs(t.rho) - 1e-12)) / (S.N_PERM + 1),
                                          abs=1e-12)
    assert 0.0005 < t.p_two_sided < 0.5  # a case where the count is neither empty nor full


def test_cluster_bootstrap_resamples_whole_clusters():
    """Three clusters of 50 identical points each: the pooled ρ has only three independent points behind it, so
    the cluster interval is wide; an i.i.d. bootstrap (the broken twin) would make it artificially narrow."""
    base = [(0.0, 0.0), (1.0, 2.0), (2.0, 1.0)]
    x = np.repeat([b[0] for b in base], 50) + np.tile(np.linspace(0, 0.01, 50), 3)
    y = np.repeat([b[1] for b in base], 50) + np.tile(np.linspace(0, 0.01, 50), 3)
    labels = np.repeat([0, 1, 2], 50)
    cb = cluster_bootstrap(x, y, labels, n_boot=500)
    assert cb.n_clusters == 3 and cb.ci[1] - cb.ci[0] > 1.0
    rng = np.random.default_rng(0)
    iid = [spearman(x[i], y[i]) for i in (rng.integers(0, x.size, x.size) for _ in range(300))]
    assert np.percentile(iid, 97.5) - np.percentile(iid, 2.5) < 0.5 * (cb.ci[1] - cb.ci[0])
    one = cluster_bootstrap(x, y, np.zeros(x.size), n_boot=10)
    assert math.isnan(one.ci[0])  # one cluster: no honest interval


def _multi_seed(a_of):
    recs = []
    for s in (0, 1, 2):
        recs += grid(seed=s, a_of=lambda p, b, s=s: a_of(p, b, s))
    return recs


def test_seed_summary_floor_counts_and_lines():
    """A(Q→P) = p − 0.01 b with a seed wobble of 0.001: every point above its floor; along fixed p the mean A falls
    as b rises (the gap rises), so the fixed-p lines are decreasing."""
    res = analyze_grid(_multi_seed(lambda p, b, s: p - 0.01 * b + 0.001 * (s - 1)), n_boot=200)
    ss = res.seeds
    assert ss.seeds == (0, 1, 2) and ss.has_floor
    c = ss.counts()
    assert c["n_points"] == 12 and c["n_above_floor"] == 12 and c["n_quantize_first_wins_above_floor"] == 12
    for pt in ss.points:
        assert pt.A.floor == pytest.approx(2 * 0.001)
        assert pt.A.mean == pytest.approx(pt.prune.ratio - 0.01 * pt.quant.bits)
    fixed_p = [ln for ln in ss.lines if ln.along == "bits" and ln.test is not None]
    assert fixed_p and all(ln.test.rho == pytest.approx(-1.0) for ln in fixed_p)
    assert res.stats.cluster == "fixed-p line"
    d = ss.to_dict()
    assert d["noise_rule"].startswith("noise floor") and d["pooled"]["cluster"] == "fixed-p line"


def test_seed_summary_below_floor_is_not_counted():
    """A wobble larger than the effect: no point above the floor, nothing counted as a win."""
    res = analyze_grid(_multi_seed(lambda p, b, s: 0.001 + (s - 1) * 0.5), n_boot=50)
    c = res.seeds.counts()
    assert c["n_above_floor"] == 0 and c["n_quantize_first_wins_above_floor"] == 0


def test_one_seed_says_no_floor():
    res = analyze_grid(grid(a_of=lambda p, b: p), n_boot=20)
    d = res.seeds.to_dict()
    assert d["noise_rule"] == ONE_SEED and d["n_above_floor"] is None


def test_t20_bound_flags_points_no_a1_ds_model_explains():
    """The fixture's orders sit at base ± A/2, so A(Q→P) exceeds T2.0's bound M(P) − M(Q∘P) = 2^-b + A/2 exactly
    when A/2 > 2^-b; the flag must say so at those points and only there (twin killed: the bound taken as
    M(Q alone) − M(dense), or the comparison without the floor)."""
    res = analyze_grid(_multi_seed(lambda p, b, s: p - 0.01 * b + 0.001 * (s - 1)), n_boot=20)
    for pt in res.seeds.points:
        a = pt.prune.ratio - 0.01 * pt.quant.bits
        assert pt.t20_bound.mean == pytest.approx(2.0 ** -pt.quant.bits + a / 2)
        assert pt.exceeds_t20_bound == (a / 2 > 2.0 ** -pt.quant.bits)
    assert res.seeds.counts()["n_exceeding_t20_bound"] == sum(
        (p - 0.01 * b) / 2 > 2.0**-b for p in (0.1, 0.3, 0.5) for b in (2, 3, 4, 8))


@given(st.lists(st.tuples(st.integers(-4, 4), st.floats(-1e3, 1e3, allow_nan=False)), min_size=3, max_size=40))
def test_spearman_and_ranks_are_scipys_to_the_bit(pairs):
    """Parity with scipy.stats (the definition before start-up stopped importing it): average ranks equal, and ρ
    equal bit for bit, ties included (integers x force them). Twins killed: ranks without tie averaging (ordinal or
    min ranks), or ρ as the Pearson r of the raw values."""
    from scipy import stats as sst

    from pih.stats import rankdata

    x = np.array([float(a) for a, _ in pairs])
    y = np.array([b for _, b in pairs])
    assert np.array_equal(rankdata(x), sst.rankdata(x)) and np.array_equal(rankdata(y), sst.rankdata(y))
    want = float("nan") if np.ptp(x) == 0 or np.ptp(y) == 0 else float(sst.spearmanr(x, y).statistic)
    got = spearman(x, y)
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_spearman_of_ties_and_nan():
    assert spearman([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 2.0, 5.0]) == pytest.approx(5 / 6)
    assert spearman([1.0, 2.0, 3.0], [3.0, 20.0, 1000.0]) == 1.0  # ranks, not values
    assert math.isnan(spearman([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]))
