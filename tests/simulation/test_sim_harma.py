"""Harma et al. on actual tensors: magnitude pruning with max-scaled (absmax) block quantization."""

from __future__ import annotations

from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from sim_testkit import advantage, deltas, metric, models, pair

from pih import Prune, Quantize
from sim import assumptions as AS
from sim.tensors import make_model

W = AS.WEIGHT  # tensor-level squared weight error
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# (C) holds: every quantization block lies inside one pruning comparison group
C_CONFIGS = {"tensor/tensor": ("tensor", "tensor"), "g4/tensor": (4, "tensor"), "channel/tensor": ("channel", "tensor"),
             "channel/row": ("channel", "row"), "g4/row": (4, "row")}
ONE_SCALE = ["tensor/tensor", "channel/row"]  # every comparison group inside one block


def stages(name):
    """(pruner, quantizer, options): magnitude with ranking scope ``per``, max-scaled symmetric quantization on
    Harma's odd grid (Q(−x) = −Q(x), ±amax on the grid)."""
    group, per = C_CONFIGS[name]
    return Prune(0.5), Quantize(4, group, grid="odd"), {"per": per}


def harma_pair(m, name, p, b, seed):
    P, Q, options = stages(name)
    return pair(m, P, Q, p, b, seed, options=options)


@SETTINGS
@given(m=models(), cfg=st.sampled_from(sorted(C_CONFIGS)), p=st.floats(0.0, 0.95), b=st.integers(2, 8),
       seed=st.integers(0, 2**16))
def test_h1_prune_first_equals_sum_of_parts(m, cfg, p, b, seed):
    """Checks proofs/harma.md (H1): prune-first error is exactly the disjoint sum (pruned weights' w² plus the
    kept weights' error under Q alone): Δ_PQ = 0 to 1e-15, and never above ε(P) + ε(Q)."""
    r = harma_pair(m, cfg, p, b, seed)
    d_pq, _ = deltas(W, r)
    assert abs(d_pq) <= 1e-15
    assert -metric(W, r, "pf") <= -metric(W, r, "p") - metric(W, r, "q") + 1e-15


@SETTINGS
@given(m=models(ties=True), cfg=st.sampled_from(ONE_SCALE), p=st.floats(0.0, 0.95), b=st.integers(2, 8),
       seed=st.integers(0, 2**16))
def test_h2_quantize_first_never_better_one_scale(m, cfg, p, b, seed):
    """Checks proofs/harma.md (H2): with one scale per pruning comparison group, quantize-first is never better,
    A(Q→P) <= 0, also with many tied magnitudes (random tie-breaking)."""
    assert advantage(W, harma_pair(m, cfg, p, b, seed)) <= 1e-15


def test_h3_quantize_first_strictly_worse_exists():
    """Checks proofs/harma.md (H3): hypothesis finds tensors where quantize-first is strictly worse (A < 0)."""

    def worse(args):
        m, p, b = args
        return advantage(W, harma_pair(m, "tensor/tensor", p, b, 0)) < -1e-9

    assert worse(find(st.tuples(models(), st.floats(0.1, 0.9), st.integers(2, 4)), worse,
                      settings=settings(database=None, derandomize=True, max_examples=200, deadline=None)))


def test_h4_across_blocks_quantize_first_can_win():
    """Checks proofs/harma.md (H4 in the simulation): when global magnitude pruning compares weights across blocks
    with different scales, hypothesis finds A(Q→P) > 0 (the claim "A <= 0 always" fails); pinned below."""

    def better(args):
        s, p, b = args
        m = make_model(s, n_layers=1, shape=(8, 16), n_samples=24, dist="student_t")
        return advantage(W, harma_pair(m, "g4/tensor", p, b, s)) > 1e-9

    found = find(st.tuples(st.integers(0, 500), st.sampled_from([0.25, 0.5, 0.75]), st.integers(2, 6)), better,
                 settings=settings(database=None, derandomize=True, max_examples=300, deadline=None))
    assert better(found)


def test_h4_pinned_regression():
    """Checks proofs/harma.md (H4, pinned regression from the search above): seed 0, one 8×16 Student-t(4) layer,
    blocks of 4 with global magnitude ranking, p = 0.5, 2 bits (key 0): quantizing first is strictly better,
    A(Q→P) = +8.3e-3 of the tensor's squared norm."""
    m = make_model(0, n_layers=1, shape=(8, 16), n_samples=24, dist="student_t")
    a = advantage(W, harma_pair(m, "g4/tensor", 0.5, 2, 0))
    assert abs(a - 8.34287e-3) < 1e-7


def test_mag_dropped_interference_is_caught():
    """Checks proofs/harma.md (MAG dropped): with Wanda's criterion, which may remove a block's maximum, H1's
    identity fails: hypothesis finds Δ_PQ != 0."""
    ps, qs = Prune(0.5, "wanda"), Quantize(4, 4, grid="odd")

    def interferes(args):
        m, p, b = args
        return abs(deltas(W, pair(m, ps, qs, p, b, 0))[0]) > 1e-9

    assert interferes(find(st.tuples(models(), st.floats(0.1, 0.9), st.integers(2, 6)), interferes,
                           settings=settings(database=None, derandomize=True, max_examples=200, deadline=None)))
