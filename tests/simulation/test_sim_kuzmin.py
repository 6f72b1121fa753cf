"""Kuzmin et al. baseline: exact integration against the reference table, Monte Carlo with the sim's mechanisms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pih import PihError
from sim import kuzmin


@pytest.fixture(scope="module")
def exact():
    return kuzmin.exact_table()


def test_exact_table_matches_reference(exact):
    """Checks proofs/kuzmin.md: the N(0,1) SNR table (quantization with the MSE-optimal step; magnitude pruning at
    1 − b/16) by exact integration, to 0.05 dB of ../shared/theory.md."""
    for r in exact:
        q, p = kuzmin.REFERENCE[r.bits]
        assert abs(r.quant_snr_db - q) <= 0.05
        assert abs(r.prune_snr_db - p) <= 0.05


def test_monte_carlo_agrees_within_sampling_error(exact):
    """Checks proofs/kuzmin.md: compressing 400k N(0,1) samples with the simulation's RTN and magnitude pruning
    reproduces the exact table within 4 standard errors (and the reference within 0.05 dB + 4 se)."""
    mc = kuzmin.monte_carlo_table(n=400_000, seed=1, scales={r.bits: r.scale for r in exact})
    for m, e in zip(mc, exact, strict=True):
        for k in ("quant", "prune"):
            assert abs(m[f"{k}_snr_db"] - getattr(e, f"{k}_snr_db")) <= 4 * m[f"{k}_se_db"] + 1e-3


def test_monte_carlo_catches_a_wrong_scale(exact):
    """Checks proofs/kuzmin.md: the agreement is not automatic: with the absmax step instead of the MSE-optimal
    one, the Monte Carlo quantization SNR at 4 bits misses the table by far more than its standard error."""
    amax = 4.5  # a typical absmax of 400k N(0,1) samples
    mc = kuzmin.monte_carlo_table(bits=(4,), n=400_000, seed=1, scales={4: amax / 7})
    e = exact[2]
    assert e.bits == 4
    assert abs(mc[0]["quant_snr_db"] - e.quant_snr_db) > 20 * mc[0]["quant_se_db"]


@settings(max_examples=10)
@given(nu=st.floats(2.5, 60.0), b=st.sampled_from([2, 3, 4]))
def test_student_t_quantization_mse_against_quadrature(nu, b):
    """Checks proofs/kuzmin.md (Student-t with nu a parameter): the closed-form cell integrals equal numerical
    quadrature of (w − Q(w))² under the unit-variance t(nu) law."""
    import math

    from scipy import integrate, stats

    law = stats.t(nu, scale=math.sqrt((nu - 2) / nu))
    s = 0.7 / (2 ** (b - 1) - 1) * 2
    tot = 0.0
    lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
    for k in range(lo, hi + 1):
        a = -np.inf if k == lo else (k - 0.5) * s
        c = np.inf if k == hi else (k + 0.5) * s
        tot += integrate.quad(lambda w, k=k: (w - k * s) ** 2 * law.pdf(w), a, c, limit=200)[0]
    assert abs(kuzmin.quant_mse(s, b, nu) - tot) <= 1e-7


@settings(max_examples=10)
@given(nu=st.floats(2.5, 60.0), sparsity=st.sampled_from([0.5, 0.625, 0.75, 0.8125, 0.875]))
def test_student_t_pruning_mse_against_quadrature(nu, sparsity):
    """Checks proofs/kuzmin.md (Student-t pruning error): E[W² 1{|W| < τ}] with τ the quantile that removes the
    fraction ``sparsity``, both computed independently here (scipy's quantile and quadrature), to 1e-9; a threshold
    off by 1 % changes the value by far more (the Monte Carlo tolerance alone would not see it)."""
    import math

    from scipy import integrate, stats

    law = stats.t(nu, scale=math.sqrt((nu - 2) / nu))
    tau = law.ppf((1 + sparsity) / 2)
    assert law.cdf(tau) - law.cdf(-tau) == pytest.approx(sparsity, abs=1e-12)
    quad = integrate.quad(lambda w: w * w * law.pdf(w), -tau, tau, limit=200)[0]
    assert abs(kuzmin.prune_mse(sparsity, nu) - quad) <= 1e-9
    off = integrate.quad(lambda w: w * w * law.pdf(w), -1.01 * tau, 1.01 * tau, limit=200)[0]
    assert abs(off - quad) > 1e-4


def test_student_t_monte_carlo_and_large_nu_limit(exact):
    """Checks proofs/kuzmin.md: the t(nu=5) table agrees with its Monte Carlo within 4 se, and t(nu=1e4) tends to
    the Gaussian table."""
    t5 = kuzmin.exact_table(bits=(4, 2), nu=5.0)
    mc = kuzmin.monte_carlo_table(bits=(4, 2), nu=5.0, n=400_000, seed=2, scales={r.bits: r.scale for r in t5})
    for m, e in zip(mc, t5, strict=True):
        assert abs(m["quant_snr_db"] - e.quant_snr_db) <= 4 * m["quant_se_db"] + 1e-3
        assert abs(m["prune_snr_db"] - e.prune_snr_db) <= 4 * m["prune_se_db"] + 1e-3
    big = kuzmin.exact_table(bits=(4,), nu=1e4)[0]
    assert abs(big.quant_snr_db - exact[2].quant_snr_db) < 0.01
    assert abs(big.prune_snr_db - exact[2].prune_snr_db) < 0.01


@pytest.mark.parametrize("nu", [2.0, 1.0, -3.0])
def test_bad_nu_is_named(nu):
    """Errors name the argument and value."""
    with pytest.raises(PihError, match="nu="):
        kuzmin.exact_table(bits=(4,), nu=nu)
