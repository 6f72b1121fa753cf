import numpy as np
import pytest

from pih import PihError, ProtocolMismatch, Provenance, Prune, Quantize, Record
from pih.analysis import analyze_grid, order_advantage_of


def prov(seed=0, **kw):
    return Provenance(backend="test", model="toy", data="none", metric="-err", seed=seed, **kw)


def grid(seed=0, a_of=lambda p, b: 0.0):
    """Q alone M = -1/2^b; P alone M = -p; orders around the sum, offset by ±A/2 (a synthetic fixture)."""
    recs = []
    for b in (2, 3, 4, 8):
        recs.append(Record(prov(seed), (Quantize(b),), -(2.0**-b)))
    for p in (0.1, 0.3, 0.5):
        P = Prune(p)
        recs.append(Record(prov(seed), (P,), -p * 0.6))
        for b in (2, 3, 4, 8):
            Q = Quantize(b)
            base = -(p * 0.6 + 2.0**-b)
            a = a_of(p, b)
            recs.append(Record(prov(seed), (Q, P), base + a / 2))
            recs.append(Record(prov(seed), (P, Q), base - a / 2))
    return recs


def test_analyze_grid_recovers_advantage_and_cer():
    res = analyze_grid(grid(a_of=lambda p, b: p - 0.01 * b), n_boot=50)
    assert len(res.rows) == 12
    for r in res.rows:
        assert r.advantage_qp == pytest.approx(r.prune.ratio - 0.01 * r.quant.bits)
        if r.cer_prune is not None:  # the CER of P inverts the reference curve
            xs, ys = 16 / np.array([8, 4, 3, 2.0]), -(2.0 ** -np.array([8, 4, 3, 2.0]))
            assert np.interp(r.cer_prune, xs, ys) == pytest.approx(r.m_prune)
    assert res.n_censored == sum(r.cer_prune is None for r in res.rows) > 0  # P at 0.5: stronger than 2 bits
    assert res.stats is not None and res.stats.n_points == 12 - res.n_censored


def test_order_advantage_of_checks_reverse_and_protocol():
    P, Q = Prune(0.5), Quantize(4)
    a = Record(prov(), (P, Q), -1.0)
    b = Record(prov(), (Q, P), -1.5)
    assert order_advantage_of(a, b) == 0.5
    with pytest.raises(PihError, match="not the reverse"):
        order_advantage_of(a, Record(prov(), (P, Quantize(3)), -1.5))
    with pytest.raises(ProtocolMismatch):
        order_advantage_of(a, Record(prov(seqlen=128), (Q, P), -1.5))
    with pytest.raises(PihError, match="seed"):
        order_advantage_of(a, Record(prov(seed=1), (Q, P), -1.5))


def test_analyze_grid_refuses_mixed_protocols():
    recs = grid() + [Record(prov(calibration="c4"), (Quantize(5),), -0.1)]
    with pytest.raises(ProtocolMismatch):
        analyze_grid(recs)


def test_analyze_grid_without_a_curve_says_so():
    recs = [r for r in grid() if not (len(r.pipeline) == 1 and isinstance(r.pipeline[0], Quantize)
                                       and r.pipeline[0].bits != 4)]
    res = analyze_grid(recs, n_boot=10)
    assert res.rows and all(r.cer_censored == "no-curve" and r.gap is None for r in res.rows)
    assert res.stats is None and res.n_censored == len(res.rows)
