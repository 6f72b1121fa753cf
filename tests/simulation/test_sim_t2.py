"""Theorem 2 on actual compressed tensors: what holds (T2.1, and T2.2 mostly) and pinned counterexamples."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, example, find, given, settings
from hypothesis import strategies as st
from sim_testkit import advantage, metric, models, pair

from pih import Prune, Quantize
from sim import assumptions as AS
from sim.tensors import make_model

PHI_CONFIGS = {  # symmetric grids: the odd one these pinned numbers were measured on
    "rtn": Quantize(4, grid="odd"),
    "stochastic": Quantize(4, rounding="stochastic", grid="odd"),
    "gptq": Quantize(4, update="gptq", grid="odd"),
    "asym-mse-g4": Quantize(4, 4, False, "mse"),
}
ROWS = Prune(0.5, "loss", "row")
PHI = {"reference": "phi"}  # A2a[phi]: degradation measured against φ
SEEN = {"reference": "seen"}  # A2a dropped: degradation of the model it sees
RTN = Quantize(4, grid="odd")


def small(seed: int):
    return make_model(seed, n_layers=2, shape=(8, 16), n_samples=24, dist="student_t")


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(m=models(), q=st.sampled_from(sorted(PHI_CONFIGS)), p=st.floats(0.0, 0.95), b=st.integers(2, 8),
       seed=st.integers(0, 2**16), a=st.sampled_from([AS.A1, AS.A1_LAMBDA]))
def test_t2_1_quantize_first_never_worse_under_a2_phi(m, q, p, b, seed, a):
    """Checks proofs/t2_monotonicity.md (T2.1): with disjoint selectivity (row units), A1 and a well-designed
    pruner in the marginal reading, 0 <= A(Q→P) <= E_Q on actual tensors, for RTN, stochastic rounding, GPTQ and
    MSE-scaled asymmetric quantizers."""
    lam = np.asarray(a.sensitivity(m.W.shape[:2], seed))
    r = pair(m, ROWS, PHI_CONFIGS[q], p, b, seed, lam, PHI)
    A = advantage(a, r, lam)
    assert A >= -1e-12
    assert A <= -metric(a, r, "q", lam) + 1e-12


def test_t2_1_dropped_a2a_is_caught():
    """Checks proofs/t2_monotonicity.md (R4 in the simulation): with the myopic pruner (degradation of the model it
    sees, A2a[seen]) hypothesis finds A(Q→P) < 0 on its own; the shrunk example is pinned below."""

    def negative(args):
        s, p, b = args
        return advantage(AS.A1, pair(small(s), ROWS, RTN, p, b, s, options=SEEN)) < -1e-9

    s, p, b = find(st.tuples(st.integers(0, 1000), st.sampled_from([0.25, 0.5, 0.75]), st.integers(2, 8)),
                   negative, settings=settings(database=None, derandomize=True, max_examples=300, deadline=None))
    assert negative((s, p, b))


def test_t2_1_pinned_myopic_counterexample():
    """Checks proofs/t2_monotonicity.md (R4, pinned regression found by the search above): seed 0, p = 0.25,
    4 bits, Student-t(4) weights (2 layers of 8×16): the myopic row pruner gives A(Q→P) = −0.00296 < 0; the
    marginal one on the same tensors gives A = 0."""
    m = small(0)
    a_seen = advantage(AS.A1, pair(m, ROWS, RTN, 0.25, 4, 0, options=SEEN))
    a_phi = advantage(AS.A1, pair(m, ROWS, RTN, 0.25, 4, 0, options=PHI))
    assert abs(a_seen + 0.0029634) < 1e-6
    assert a_phi == 0.0


@example(seed=0, p=0.75)
@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 200), p=st.sampled_from([0.25, 0.5, 0.75]))
def test_t2_2_fixed_p_lines_anti_pih_where_monotone(seed, p):
    """Checks proofs/t2_monotonicity.md (T2.2 direction, with T1.3): along a fixed pruning setting the CER gap
    falls as bits fall. Where 8 bits changes no owner (T1.3), A(Q→P) = 0 there, and A >= 0 at 2 bits (T2.1):
    from 8 to 2 bits A never falls while the gap falls — the reverse of PIH's direction."""
    m = small(seed)
    r8 = pair(m, ROWS, RTN, p, 8, seed, options=PHI)
    assume((r8["pf_row_owner"] == r8["qf_row_owner"]).all())
    A8 = advantage(AS.A1, r8)
    A2 = advantage(AS.A1, pair(m, ROWS, RTN, p, 2, seed, options=PHI))
    assert A8 == 0.0
    assert A2 >= A8


def test_t2_2_needs_scale_family_pinned():
    """Checks proofs/t2_monotonicity.md (R3 in the simulation, pinned regression): real round-to-nearest is not
    the one-parameter SCALE family, and T2.2's monotonicity along fixed p fails: seed 299, p = 0.25, the
    bit-width line 8,6,5,4,3,2 gives A = 0, 0, 0, 0, 0.0166, 0.0059 — it rises, then falls as bits fall."""
    m = small(299)
    As = np.array([advantage(AS.A1, pair(m, ROWS, RTN, 0.25, b, 299, options=PHI)) for b in (8, 6, 5, 4, 3, 2)])
    assert (As >= -1e-12).all()  # T2.1 still holds
    assert (np.diff(As) < -1e-6).any()  # but A is not monotone along the line
    assert abs(As[4] - 0.0166055) < 1e-6 and abs(As[5] - 0.0058727) < 1e-6


def test_pih_sign_refuted_pinned():
    """Checks proofs/t2_monotonicity.md (R1 in the simulation, pinned regression found by hypothesis): seed 0,
    p = 0.25, 2 bits: quantization alone is the stronger method (M_Q < M_P, so C*_P − C_Q < 0 and PIH predicts
    prune-first better, A < 0), yet quantizing first is strictly better, A(Q→P) = +0.042 with the marginal and
    +0.030 with the myopic pruner."""
    m = small(0)
    for reference, expected in ((PHI, 0.0419691), (SEEN, 0.0301312)):
        r = pair(m, ROWS, RTN, 0.25, 2, 0, options=reference)
        assert metric(AS.A1, r, "q") < metric(AS.A1, r, "p")
        assert abs(advantage(AS.A1, r) - expected) < 1e-6
