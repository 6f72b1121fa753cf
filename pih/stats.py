"""Statistics that respect how the figures were obtained: the per-point noise floor over calibration seeds, exact
permutation tests along the lines of a grid, and cluster bootstraps for pooled figures.

One definition each, used by every backend and command:

- **Noise floor** of a grid point: twice the sample standard deviation (ddof = 1) of its measured A over the
  calibration seeds. A point is *above the floor* when |mean A| exceeds it; only such points count towards a sign or
  trend claim. With one seed there is no floor (``None``): such a store cannot support a claim, and every summary
  says so.
- **Line tests**: monotonicity of A(Q→P) in C*_P − C_Q is tested per line of the grid (fixed pruning setting with
  the bit width varying, and fixed bit width with the pruning setting varying), on points whose CER is uncensored at
  every seed, by Spearman's ρ of the per-point means with its exact permutation distribution (all n! orderings for
  n ≤ 8, else a seeded Monte Carlo of 20 000).
- **Pooled figures** (a ρ over several lines or seeds) get a *cluster* bootstrap: whole clusters (seeds, or whole
  lines) are resampled with replacement, never single points, because points that share a model, a seed or a
  pruning setting are not independent.
- **Proportions** (the fraction of verified runs a predictor got right) get a Wilson score interval; two
  predictors scored on the same points are compared by an exact sign test on the points where exactly one of them
  is wrong (McNemar's exact test).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import bad

NOISE_RULE = ("noise floor of a point = 2 x sample std (ddof=1) of its measured A over calibration seeds; "
              "a point counts for a sign or trend claim only when |mean A| > floor")
ONE_SEED = "one seed: no noise floor, so no sign or trend claim can be made from this store"
EXACT_MAX = 8
N_PERM = 20_000


def noise_floor(values: Sequence[float]) -> float | None:
    """2 × the sample standard deviation of ``values`` (ddof = 1); None with fewer than two values."""
    v = np.asarray(list(values), dtype=float)
    if v.size < 2:
        return None
    if not np.isfinite(v).all():
        raise bad("values", v.tolist(), "the noise floor needs finite values")
    return 2.0 * float(np.std(v, ddof=1))


@dataclass(frozen=True)
class SeedStat:
    """A measured quantity over seeds: mean, spread, noise floor and whether the mean is above it."""

    values: tuple[float, ...]
    mean: float
    sd: float | None
    floor: float | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def above(self) -> bool | None:
        """|mean| > floor; None with one seed (no floor)."""
        return None if self.floor is None else abs(self.mean) > self.floor

    @property
    def sign(self) -> int:
        """The sign of the mean when it is above the floor, else 0 (not decidable at this size)."""
        return int(np.sign(self.mean)) if self.above else 0

    def to_dict(self) -> dict:
        return {"values": list(self.values), "mean": self.mean, "sd": self.sd, "floor": self.floor, "n": self.n,
                "above_floor": self.above}


def seed_stat(values: Sequence[float]) -> SeedStat:
    v = tuple(float(x) for x in values)
    if not v:
        raise bad("values", [], "needs at least one value")
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return SeedStat(v, float(np.mean(v)), sd, noise_floor(v))


def spearman(x, y, min_points: int = 3) -> float:
    """Spearman's ρ: the project's one definition (NaN when either side is constant or there are fewer than
    ``min_points`` points; a resampled statistic passes 2, where two distinct points have ρ = ±1)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < min_points or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    if np.isnan(x).any() or np.isnan(y).any():  # as scipy's nan_policy="propagate"
        return float("nan")
    # Pearson's r of the average ranks, computed as scipy.stats.spearmanr does (np.corrcoef of the two rank
    # columns: the same float64 operations, so the same value to the last bit, tested) without importing
    # scipy.stats, which takes 0.6-1 s of a run's start-up
    return float(np.corrcoef(np.column_stack([rankdata(x), rankdata(y)]), rowvar=False)[1, 0])


def rankdata(a) -> np.ndarray:
    """Ranks 1..n of ``a``, ties given the average of the ranks they span (scipy.stats.rankdata's "average")."""
    a = np.asarray(a, dtype=float).ravel()
    order = np.argsort(a, kind="mergesort")
    srt = a[order]
    first = np.r_[True, srt[1:] != srt[:-1]]  # the first entry of each run of ties
    group = np.cumsum(first) - 1
    bounds = np.r_[np.nonzero(first)[0], a.size]  # where each run starts, and the end
    avg = 0.5 * (bounds[:-1] + bounds[1:] - 1) + 1.0
    ranks = np.empty(a.size, dtype=float)
    ranks[order] = avg[group]
    return ranks


@dataclass(frozen=True)
class PermutationTest:
    """Spearman's ρ of y in x and its permutation p-values (exact for n ≤ 8)."""

    rho: float
    n: int
    p_two_sided: float
    p_increasing: float  # P(ρ_perm ≥ ρ): small when y rises with x
    p_decreasing: float  # P(ρ_perm ≤ ρ)
    exact: bool

    @property
    def min_p(self) -> float:
        """The smallest one-sided p-value the test can reach at this n (1/n! when exact)."""
        return 1.0 / math.factorial(self.n) if self.exact else 1.0 / (N_PERM + 1)

    def direction(self, alpha: float = 0.05) -> str:
        """'increasing', 'decreasing', or 'not decidable' (no one-sided p below ``alpha``, or too few points for
        the test to reach it)."""
        if not np.isfinite(self.rho) or self.min_p > alpha:
            return "not decidable"
        if self.p_increasing <= alpha:
            return "increasing"
        if self.p_decreasing <= alpha:
            return "decreasing"
        return "not decidable"

    def to_dict(self) -> dict:
        return {"rho": self.rho, "n": self.n, "p_two_sided": self.p_two_sided, "p_increasing": self.p_increasing,
                "p_decreasing": self.p_decreasing, "exact": self.exact, "min_p": self.min_p,
                "direction": self.direction()}


def permutation_test(x, y, seed: int = 0) -> PermutationTest:
    """Spearman's ρ with its permutation distribution under H0 (y exchangeable given x)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size != y.size:
        raise bad("y", f"{y.size} values", f"needs one per x ({x.size})")
    n = x.size
    rho = spearman(x, y)
    if not np.isfinite(rho):
        return PermutationTest(rho, n, float("nan"), float("nan"), float("nan"), n <= EXACT_MAX)
    rx = rankdata(x)
    ry = rankdata(y)
    # Pearson's r of the ranks for every permutation at once: a permutation keeps ry's mean and spread, so each r
    # is one dot product of the centred ranks over the same denominator
    cx, cy = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt(np.dot(cx, cx) * np.dot(cy, cy))

    if n <= EXACT_MAX:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.intp).reshape(-1, n)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        perms = np.array([rng.permutation(n) for _ in range(N_PERM)], dtype=np.intp)
        exact = False
    null = (cy[perms] @ cx) / denom
    eps = 1e-12
    if exact:
        p_inc = float(np.mean(null >= rho - eps))
        p_dec = float(np.mean(null <= rho + eps))
        p_two = float(np.mean(np.abs(null) >= abs(rho) - eps))
    else:  # Monte Carlo: count the observed statistic as one of the draws
        p_inc = float((1 + np.sum(null >= rho - eps)) / (N_PERM + 1))
        p_dec = float((1 + np.sum(null <= rho + eps)) / (N_PERM + 1))
        p_two = float((1 + np.sum(np.abs(null) >= abs(rho) - eps)) / (N_PERM + 1))
    return PermutationTest(rho, n, min(1.0, p_two), p_inc, p_dec, exact)


@dataclass(frozen=True)
class ClusterBootstrap:
    """A statistic on all points and its percentile interval from resampling whole clusters."""

    value: float
    ci: tuple[float, float]
    n_points: int
    n_clusters: int
    cluster: str  # what a cluster is ("seed", "line", ...)
    n_boot: int

    def to_dict(self) -> dict:
        return {"value": self.value, "ci": list(self.ci), "n_points": self.n_points, "n_clusters": self.n_clusters,
                "cluster": self.cluster, "n_boot": self.n_boot}


def cluster_bootstrap(x, y, clusters, statistic: Callable = spearman, n_boot: int = 2000, seed: int = 0,
                      cluster: str = "cluster") -> ClusterBootstrap:
    """``statistic(x, y)`` over all points, with a 95 % percentile interval from ``n_boot`` resamples of whole
    clusters (labels in ``clusters``, one per point) drawn with replacement. With fewer than 2 clusters the interval
    is (NaN, NaN): a pooled figure over one cluster has no honest interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    labels = np.asarray(list(clusters), dtype=object)
    if not (x.size == y.size == labels.size):
        raise bad("clusters", f"{labels.size} labels", f"needs one per point ({x.size})")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise bad("n_boot", n_boot, "must be a positive integer")
    value = float(statistic(x, y))
    uniq = list(dict.fromkeys(labels.tolist()))
    if len(uniq) < 2:
        return ClusterBootstrap(value, (float("nan"), float("nan")), int(x.size), len(uniq), cluster, n_boot)
    members = [np.nonzero(labels == u)[0] for u in uniq]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[k] for k in pick])
        v = statistic(x[idx], y[idx])
        if np.isfinite(v):
            boots.append(v)
    ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (np.nan, np.nan)
    return ClusterBootstrap(value, ci, int(x.size), len(uniq), cluster, n_boot)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k``/``n`` (95 % by default); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def sign_test(k: int, m: int) -> float:
    """Two-sided exact sign test of ``k`` against ``m`` discordant outcomes (McNemar's exact test); 1.0 with none."""
    n = k + m
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, m) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
