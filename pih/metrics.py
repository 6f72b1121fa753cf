"""The intensity metrics: performance gap G, compression equivalent ratio (CER), order advantage A, and the
statistics used to judge whether A rises monotonically with the CER gap."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import bad, check_tensor


def ratio_16_over_b(bits):
    """Default compression-ratio convention C_Q(b) = 16 / b (16-bit baseline)."""
    b = np.asarray(bits, dtype=float)
    if (b <= 0).any():
        raise bad("bits", bits, "bit widths must be positive")
    return 16.0 / b


def performance_gap(m1: float, m2: float) -> float:
    """G(f1, f2) = M(f1(φ)) − M(f2(φ)); G > 0 means f2 is the stronger perturbation."""
    return float(m1) - float(m2)


# A difference of two measurements within this fraction of the larger of them is round-off, not a measured effect:
# the same float64 errors computed by two compiled programs that differ only in loop structure differ by up to
# 3.3e-14 of their size (measured on the simulation's 512 x 512 grids), a perplexity is known to far fewer digits.
ROUNDOFF = 1e-12


def order_advantage(m_f1_first: float, m_f2_first: float) -> float:
    """A(f1→f2) = M(f2∘f1) − M(f1∘f2): how much better applying f1 first is. Exactly 0 when the two measurements
    agree to within :data:`ROUNDOFF` of the larger one, so a sign is never read from round-off."""
    a, b = float(m_f1_first), float(m_f2_first)
    d = a - b
    return 0.0 if abs(d) <= ROUNDOFF * max(abs(a), abs(b)) else d


def _isotonic_nonincreasing(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Pool-adjacent-violators fit of a non-increasing sequence (least squares)."""
    w = np.ones_like(y) if w is None else w
    vals, wts, lens = [], [], []
    for yi, wi in zip(y, w, strict=True):
        vals.append(float(yi))
        wts.append(float(wi))
        lens.append(1)
        while len(vals) > 1 and vals[-2] < vals[-1]:
            v2, w2, n2 = vals.pop(), wts.pop(), lens.pop()
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / (wts[-1] + w2)
            wts[-1] += w2
            lens[-1] += n2
    return np.repeat(vals, lens)


@dataclass(frozen=True)
class CER:
    """A compression equivalent ratio. ``value`` is None when censored; ``bound`` is then the edge it lies past."""

    value: float | None
    censored: str | None = None  # None | "weaker" | "stronger"
    bound: float | None = None
    crossings: tuple[float, ...] = ()
    curve_monotone: bool = True

    @property
    def ambiguous(self) -> bool:
        return len(self.crossings) > 1

    def to_dict(self) -> dict:
        return {
            "value": self.value,
            "censored": self.censored,
            "bound": self.bound,
            "crossings": list(self.crossings),
            "curve_monotone": self.curve_monotone,
        }


@dataclass(frozen=True)
class QuantCurve:
    """The reference quantizer's measured performance at several bit widths: points (C_Q(b), M_Q(b)).

    ``ratio`` maps bits to the compression ratio (default 16/b). With ``isotonic=True`` a non-increasing fit of
    M against ratio replaces the raw points; either way ``monotone`` and ``violations`` report the raw curve.
    """

    bits: Sequence[float]
    perf: Sequence[float]
    ratio: Callable = ratio_16_over_b
    isotonic: bool = False
    x: np.ndarray = field(init=False, repr=False)
    y: np.ndarray = field(init=False, repr=False)
    raw_y: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        b = np.asarray(self.bits, dtype=float).ravel()
        m = np.asarray(self.perf, dtype=float).ravel()
        if b.size == 0 or m.size == 0:
            raise bad("bits" if b.size == 0 else "perf", list(b if b.size == 0 else m), "the curve is empty")
        if b.size != m.size:
            raise bad("perf", f"{m.size} values", f"needs one value per bit width ({b.size} given)")
        if b.size < 2:
            raise bad("bits", list(b), "a CER curve needs at least two bit widths")
        check_tensor("bits", b)
        check_tensor("perf", m)
        x = np.asarray(self.ratio(b), dtype=float)
        if len(np.unique(x)) != x.size:
            raise bad("bits", list(b), "repeated bit widths (equal compression ratios)")
        order = np.argsort(x)
        x, m = x[order], m[order]
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "raw_y", m)
        object.__setattr__(self, "y", _isotonic_nonincreasing(m) if self.isotonic else m)

    @property
    def violations(self) -> list[tuple[float, float]]:
        """Adjacent pairs (ratio_i, ratio_j), ratio_i < ratio_j, where more compression measured better."""
        bad_idx = np.nonzero(np.diff(self.raw_y) > 0)[0]
        return [(float(self.x[i]), float(self.x[i + 1])) for i in bad_idx]

    @property
    def monotone(self) -> bool:
        return not self.violations

    def cer(self, perf: float) -> CER:
        """The ratio at which the reference quantizer's performance equals ``perf`` (linear interpolation)."""
        p = float(perf)
        if not np.isfinite(p):
            raise bad("perf", perf, "must be finite")
        x, y = self.x, self.y
        mono = self.monotone
        if p > y.max():
            return CER(None, "weaker", float(x[np.argmax(y)]), (), mono)
        if p < y.min():
            return CER(None, "stronger", float(x[np.argmin(y)]), (), mono)
        crossings: list[float] = []
        plateau_end = None  # a flat stretch at level p counts once, at its mild end
        for i in range(len(x) - 1):
            y0, y1 = y[i], y[i + 1]
            if not min(y0, y1) <= p <= max(y0, y1):
                continue
            if y0 == y1:
                c = float(x[i]) if plateau_end != float(x[i]) else None
                plateau_end = float(x[i + 1])
            else:
                c = float(x[i] + (p - y0) * (x[i + 1] - x[i]) / (y1 - y0))
                if plateau_end is not None and c == plateau_end:
                    c = None
            if c is not None and (not crossings or abs(crossings[-1] - c) > 1e-12):
                crossings.append(c)
        return CER(crossings[0], None, None, tuple(crossings), mono)


@dataclass(frozen=True)
class Monotonicity:
    """How monotonically y rises with x."""

    rho: float
    rho_ci: tuple[float, float]
    concordant_fraction: float
    n_points: int
    n_pairs: int
    n_violations: int
    violating_pairs: list[tuple[int, int]]
    exact_pairs: bool
    cluster: str = "point"  # what the bootstrap resampled (point: i.i.d.; seed, line: a cluster bootstrap)
    n_clusters: int = 0

    def to_dict(self) -> dict:
        return {
            "spearman_rho": self.rho,
            "rho_ci": list(self.rho_ci),
            "ci_resamples": self.cluster,
            "n_clusters": self.n_clusters,
            "concordant_fraction": self.concordant_fraction,
            "n_points": self.n_points,
            "n_pairs": self.n_pairs,
            "n_violations": self.n_violations,
            "violating_pairs": [list(p) for p in self.violating_pairs],
            "exact_pairs": self.exact_pairs,
        }


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """ρ of (resampled) points: :func:`pih.stats.spearman` down to 2 points (the statistic's callers need ≥ 3)."""
    from .stats import spearman

    return spearman(x, y, min_points=2)


def monotonicity(x, y, n_boot: int = 1000, seed: int = 0, max_pairs: int = 4_000_000,
                 max_listed: int = 1000, clusters=None, cluster: str = "point") -> Monotonicity:
    """Spearman ρ with a percentile bootstrap interval, the fraction of concordant pairs and the violating pairs.

    Pairs with equal x are skipped. A pair (i, j) with x_i < x_j is concordant when y_i < y_j and violating when
    y_i > y_j (ties in y are neither). Above ``max_pairs`` pairs, a seeded random sample of pairs is used
    (``exact_pairs`` False). ``clusters`` (one label per point: the seed, the line...) makes the interval a cluster
    bootstrap (whole clusters resampled, :func:`pih.stats.cluster_bootstrap`): use it whenever points share a model,
    a seed or a setting. Without it the points are resampled one by one, which is right only for independent points.
    """
    xa = check_tensor("x", x).astype(float).ravel()
    ya = check_tensor("y", y).astype(float).ravel()
    if xa.size != ya.size:
        raise bad("y", f"{ya.size} values", f"needs one value per x ({xa.size} given)")
    n = xa.size
    if n < 3:
        raise bad("x", f"{n} points", "monotonicity statistics need at least 3 points")
    rng = np.random.default_rng(seed)
    rho = _spearman(xa, ya)
    if clusters is not None:
        from .stats import cluster_bootstrap

        cb = cluster_bootstrap(xa, ya, clusters, statistic=_spearman, n_boot=int(n_boot), seed=seed, cluster=cluster)
        ci, n_clusters = cb.ci, cb.n_clusters
    else:
        boots = []
        for _ in range(int(n_boot)):
            idx = rng.integers(0, n, n)
            r = _spearman(xa[idx], ya[idx])
            if np.isfinite(r):
                boots.append(r)
        ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (np.nan, np.nan)
        n_clusters = n

    total = n * (n - 1) // 2
    exact = total <= max_pairs
    if exact:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, max_pairs)
        j = rng.integers(0, n, max_pairs)
        keep = i != j
        i, j = i[keep], j[keep]
    dx = np.sign(xa[j] - xa[i])
    dy = np.sign(ya[j] - ya[i])
    valid = dx != 0
    conc = (dx * dy > 0) & valid
    viol = (dx * dy < 0) & valid
    n_valid = int(valid.sum())
    vi, vj = i[viol], j[viol]
    swap = xa[vi] > xa[vj]
    first, second = np.where(swap, vj, vi), np.where(swap, vi, vj)
    listed = [(int(a), int(b)) for a, b in zip(first[:max_listed], second[:max_listed], strict=True)]
    return Monotonicity(
        rho=rho,
        rho_ci=ci,
        concordant_fraction=float(conc.sum() / n_valid) if n_valid else float("nan"),
        n_points=n,
        n_pairs=n_valid,
        n_violations=int(viol.sum()),
        violating_pairs=listed,
        exact_pairs=exact,
        cluster=cluster if clusters is not None else "point",
        n_clusters=n_clusters,
    )
