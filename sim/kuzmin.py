"""Kuzmin et al. (NeurIPS 2023) analytic baseline: SNR of b-bit quantization vs magnitude pruning at 1 − b/16.

Exact integration for N(0,1) (closed form) and Student-t (``nu`` a parameter; numerical quadrature), and a Monte
Carlo estimate that compresses actual samples with the simulation's own mechanisms, with its standard error.
Quantization: the signed grid {−2^(b−1) .. 2^(b−1)−1}·s with the MSE-optimal s. SNR = 10 log10 E[W²]/E[(W−F(W))²].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from pih.errors import bad

BITS = (8, 6, 4, 3, 2)


def _law(nu: float | None):
    """(distribution, E[W²]) for N(0,1) (nu None) or Student-t, rescaled to unit variance when nu > 2."""
    if nu is None:
        return stats.norm(), 1.0
    if not nu > 0:
        raise bad("nu", nu, "degrees of freedom must be positive")
    if nu > 2:
        sc = math.sqrt((nu - 2) / nu)
        return stats.t(nu, scale=sc), 1.0
    raise bad("nu", nu, "E[W²] is infinite for nu <= 2: the SNR is undefined")


def _partial_moments(x, nu: float | None):
    """(M0, M1, M2)(x) = ∫_{-∞}^x w^k f(w) dw, k = 0, 1, 2, in closed form (vectorised; x may hold ±inf)."""
    x = np.asarray(x, dtype=float)
    if nu is None:
        Phi, phi = stats.norm.cdf(x), stats.norm.pdf(x)
        with np.errstate(invalid="ignore"):
            xphi = np.where(np.isfinite(x), x * phi, 0.0)
        return Phi, -phi, Phi - xphi
    sc = math.sqrt((nu - 2) / nu)  # W = sc·T_nu has unit variance
    t = x / sc
    f = stats.t.pdf(t, nu)
    m0 = stats.t.cdf(t, nu)
    tail = np.where(np.isfinite(t), (nu + np.where(np.isfinite(t), t, 0.0) ** 2) / (nu - 1) * f, 0.0)
    m1 = -tail * sc
    # t² f_ν(t) = ν (c_ν / c_{ν−2}) f_{ν−2}(t √((ν−2)/ν)) − ν f_ν(t), integrated:
    m2 = (nu * (nu - 1) / (nu - 2) * stats.t.cdf(t * math.sqrt((nu - 2) / nu), nu - 2) - nu * m0) * sc**2
    return m0, m1, m2


def quant_mse(s: float, bits: int, nu: float | None = None) -> float:
    """E[(W − Q_s(W))²] for the signed b-bit grid with step s, by exact integration over the rounding cells."""
    _law(nu)
    k = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=float)
    edges = np.concatenate([[-np.inf], (k[:-1] + 0.5) * s, [np.inf]])
    m0, m1, m2 = _partial_moments(edges, nu)
    c = k * s
    return float(np.sum(np.diff(m2) - 2 * c * np.diff(m1) + c * c * np.diff(m0)))


def optimal_scale(bits: int, nu: float | None = None) -> tuple[float, float]:
    """(s*, MSE(s*)): the MSE-optimal step, by a grid search refined with bounded Brent."""
    law, _ = _law(nu)
    amax = law.ppf(1 - 1e-7)
    grid = np.linspace(amax / 2 ** (bits + 3), 2 * amax / 2 ** (bits - 1), 200)
    vals = [quant_mse(s, bits, nu) for s in grid]
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    r = optimize.minimize_scalar(lambda s: quant_mse(s, bits, nu), bounds=(a, b), method="bounded",
                                 options={"xatol": 1e-12})
    return float(r.x), float(r.fun)


def prune_mse(sparsity: float, nu: float | None = None) -> float:
    """E[W² 1{|W| < τ}] with τ the magnitude threshold removing the fraction ``sparsity``."""
    if not 0 <= sparsity < 1:
        raise bad("sparsity", sparsity, "must lie in [0, 1)")
    law, _ = _law(nu)
    tau = law.ppf((1 + sparsity) / 2)
    _, _, m2 = _partial_moments(np.array([-tau, tau]), nu)
    return float(m2[1] - m2[0])


def snr_db(mse: float, power: float = 1.0) -> float:
    return 10.0 * math.log10(power / mse)


@dataclass(frozen=True)
class KuzminRow:
    bits: int
    sparsity: float
    quant_snr_db: float
    prune_snr_db: float
    scale: float

    def to_dict(self) -> dict:
        return {"bits": self.bits, "sparsity": self.sparsity, "quant_snr_db": self.quant_snr_db,
                "prune_snr_db": self.prune_snr_db, "scale": self.scale}


def exact_table(bits=BITS, nu: float | None = None, base: int = 16) -> list[KuzminRow]:
    """The table by exact integration (sparsity 1 − b/base)."""
    rows = []
    for b in bits:
        s, mq = optimal_scale(int(b), nu)
        sp = 1 - b / base
        rows.append(KuzminRow(int(b), sp, snr_db(mq), snr_db(prune_mse(sp, nu)), s))
    return rows


def monte_carlo_table(bits=BITS, nu: float | None = None, n: int = 1_000_000, seed: int = 0, base: int = 16,
                      scales: dict | None = None) -> list[dict]:
    """The same table by compressing ``n`` samples with the simulation's mechanisms (RTN at the exact optimal
    step; magnitude pruning with random tie-breaking), with standard errors in dB (delta method)."""
    import jax
    import jax.numpy as jnp

    from . import mechanisms as mech

    law, _ = _law(nu)
    rng = np.random.default_rng(seed)
    w = law.rvs(size=n, random_state=rng)
    power = float(np.mean(w * w))
    W = jnp.asarray(w).reshape(1, -1)
    out = []
    for b in bits:
        s = (scales or {}).get(int(b)) or optimal_scale(int(b), nu)[0]
        q = np.asarray(mech.fake_quant(W, s, 0.0, float(b), True)).ravel()
        sp = 1 - b / base
        pr, _ = mech.prune_unstructured(W, None, sp, jax.random.PRNGKey(seed), "magnitude")
        pr = np.asarray(pr).ravel()
        row = {"bits": int(b), "sparsity": sp}
        for name, wq in (("quant", q), ("prune", pr)):
            e2 = (w - wq) ** 2
            mse = float(e2.mean())
            # SNR = 10 log10(mean w² / mean e²): delta method on the ratio of two means
            cov = np.cov(np.vstack([w * w, e2]))
            var_log = (cov[0, 0] / power**2 + cov[1, 1] / mse**2 - 2 * cov[0, 1] / (power * mse)) / n
            row[f"{name}_snr_db"] = snr_db(mse, power)
            row[f"{name}_se_db"] = float(10 / math.log(10) * math.sqrt(max(var_log, 0.0)))
        out.append(row)
    return out


# The reference table of ../shared/theory.md (N(0,1), exact integration).
REFERENCE = {8: (40.57, 11.47), 6: (29.82, 8.31), 4: (19.26, 5.58), 3: (13.91, 4.30), 2: (8.26, 3.03)}
