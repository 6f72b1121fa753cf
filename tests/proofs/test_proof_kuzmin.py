"""Checks of proofs/kuzmin.md: closed forms for N(0,1) pruning and quantization error, and the SNR table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

PHI, phi = stats.norm.cdf, stats.norm.pdf


def prune_error(p: float) -> float:
    """K1: E[W² 1{|W| < τ}] = 2Φ(τ) − 1 − 2τφ(τ), τ = Φ⁻¹((1+p)/2)."""
    tau = stats.norm.ppf((1 + p) / 2)
    return 2 * PHI(tau) - 1 - 2 * tau * phi(tau)


def segment(a, c, m):
    """K2: ∫_a^c (x − m)² φ(x) dx = (1 + m²)(Φ(c) − Φ(a)) + (a − 2m)φ(a) − (c − 2m)φ(c) (vectorised)."""
    a, c, m = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (a, c, m)))
    with np.errstate(invalid="ignore"):
        fa = np.where(np.isinf(a), 0.0, (a - 2 * m) * phi(a))
        fc = np.where(np.isinf(c), 0.0, (c - 2 * m) * phi(c))
    return (1 + m * m) * (PHI(c) - PHI(a)) + fa - fc


def grid(bits: int, symmetric: bool = False) -> np.ndarray:
    lo = -(2 ** (bits - 1)) + (1 if symmetric else 0)
    return np.arange(lo, 2 ** (bits - 1))


def quant_error(s: float, bits: int, symmetric: bool = False) -> float:
    """K2: E_Q(s, b) as a sum of cell integrals (the outermost cells hold the clipping tails)."""
    ks = grid(bits, symmetric)
    edges = np.concatenate([[-np.inf], (ks[:-1] + 0.5) * s, [np.inf]])
    return float(segment(edges[:-1], edges[1:], ks * s).sum())


def optimal(bits: int, symmetric: bool = False) -> tuple[float, float]:
    ss = np.linspace(1e-3, 3.0, 3000)
    vals = np.array([quant_error(s, bits, symmetric) for s in ss])
    i = int(np.argmin(vals))
    res = optimize.minimize_scalar(lambda s: quant_error(s, bits, symmetric), method="bounded",
                                   bounds=(ss[max(i - 1, 0)], ss[min(i + 1, ss.size - 1)]),
                                   options={"xatol": 1e-12})
    return float(res.x), float(res.fun)


def snr(e: float) -> float:
    return -10 * np.log10(e)


@given(st.floats(0.0, 0.995))
def test_k1_pruning_closed_form_vs_quad(p):
    """proofs/kuzmin.md K1: 2Φ(τ) − 1 − 2τφ(τ) = p − 2τφ(τ) is the removed (error) second moment; kept = 1 − it."""
    tau = stats.norm.ppf((1 + p) / 2)
    removed = integrate.quad(lambda x: x * x * phi(x), -tau, tau)[0]
    kept = 2 * integrate.quad(lambda x: x * x * phi(x), tau, np.inf)[0]
    assert prune_error(p) == pytest.approx(removed, abs=1e-10)
    assert prune_error(p) == pytest.approx(p - 2 * tau * phi(tau), abs=1e-12)
    assert 1 - prune_error(p) == pytest.approx(kept, abs=1e-8)


@given(st.floats(-4, 4), st.floats(0, 4), st.floats(-3, 3), st.booleans(), st.booleans())
def test_k2_segment_integral_vs_quad(a, width, m, a_inf, c_inf):
    """proofs/kuzmin.md K2: the segment integral in closed form, finite and infinite ends."""
    lo = -np.inf if a_inf else a
    hi = np.inf if c_inf else a + width
    num = integrate.quad(lambda x: (x - m) ** 2 * phi(x), lo, hi)[0]
    assert float(segment(lo, hi, m)) == pytest.approx(num, abs=1e-9)


@settings(max_examples=25)
@given(st.floats(0.01, 3.0), st.integers(2, 6))
def test_k2_quantization_closed_form_vs_quad(s, bits):
    """proofs/kuzmin.md K2: E_Q(s, b) on the signed grid with clipping equals direct quadrature."""
    ks = grid(bits)
    f = lambda x: (x - s * np.clip(np.round(x / s), ks[0], ks[-1])) ** 2 * phi(x)
    pts = list((ks[:-1] + 0.5) * s)
    lo, hi = min(-12.0, pts[0] - 1), max(12.0, pts[-1] + 1)
    num = integrate.quad(f, lo, hi, points=pts, limit=1000)[0]
    assert quant_error(s, bits) == pytest.approx(num, rel=1e-7, abs=1e-12)


TABLE = {8: (0.5, 40.57, 11.47), 6: (0.625, 29.82, 8.31), 4: (0.75, 19.26, 5.58), 3: (0.8125, 13.91, 4.30),
         2: (0.875, 8.26, 3.03)}
STEPS = {8: 0.03077, 6: 0.10418, 4: 0.33861, 3: 0.60182, 2: 1.04839}


@pytest.mark.parametrize("bits", sorted(TABLE))
def test_k3_table(bits):
    """proofs/kuzmin.md K3: MSE-optimal step and the SNR table of ../shared/theory.md §5.5, to 0.05 dB."""
    p, q_db, p_db = TABLE[bits]
    assert p == 1 - bits / 16
    s, e = optimal(bits)
    assert s == pytest.approx(STEPS[bits], abs=2e-5)
    assert snr(e) == pytest.approx(q_db, abs=0.05)
    assert snr(prune_error(p)) == pytest.approx(p_db, abs=0.05)
    assert e <= quant_error(s * 1.01, bits) and e <= quant_error(s * 0.99, bits)


def test_symmetric_grid_two_bits():
    """proofs/kuzmin.md (RTN-SIGNED dropped): the symmetric 2-bit grid {−1, 0, 1}·s: optimal s = 1.224,
    SNR 7.208 dB instead of 8.256 dB; at 4 bits 18.898 dB instead of 19.258 dB."""
    _, e = optimal(2, symmetric=True)
    assert snr(e) == pytest.approx(7.208, abs=0.01)
    assert snr(e) < 8.26
    _, e4 = optimal(4, symmetric=True)
    assert snr(e4) == pytest.approx(18.898, abs=0.01)  # neither grid gives the 19.1 dB quoted in the paper's text


def test_student_t_moves_both_ways():
    """proofs/kuzmin.md (GAUSS dropped): Student-t(4) scaled to unit variance, 4 bits / 75%: quantization SNR
    12.74 dB (Gaussian 19.26), pruning SNR 7.60 dB (Gaussian 5.58)."""
    nu = 4
    d = stats.t(nu, scale=np.sqrt((nu - 2) / nu))
    ks = grid(4)

    def qerr(s):
        edges = np.concatenate([[-np.inf], (ks[:-1] + 0.5) * s, [np.inf]])
        return sum(integrate.quad(lambda x, m=k * s: (x - m) ** 2 * d.pdf(x), edges[i], edges[i + 1])[0]
                   for i, k in enumerate(ks))

    res = optimize.minimize_scalar(qerr, bounds=(0.3, 0.9), method="bounded", options={"xatol": 1e-6})
    tau = d.ppf(0.875)
    pe = 2 * integrate.quad(lambda x: x * x * d.pdf(x), 0, tau)[0]
    assert snr(res.fun) == pytest.approx(12.74, abs=0.02)
    assert snr(pe) == pytest.approx(7.60, abs=0.02)
