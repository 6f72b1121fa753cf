"""Interference on actual tensors: the additivity identity, where it vanishes, and how it depends on b."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st
from sim_testkit import advantage, deltas, metric, models, pair

from pih import MixedPrecision, Prune, Quantize, interference
from sim import assumptions as AS
from sim import pipeline as pl
from sim.tensors import make_model

INTERFERING = {  # (pruner, quantizer, simulation options); symmetric grids: the odd one
    "magnitude x g4-asym-mse": (Prune(0.5), Quantize(4, 4, False, "mse"), {}),
    "wanda x g4-absmax": (Prune(0.5, "wanda"), Quantize(4, 4, grid="odd"), {}),
    "wanda x channel-mse": (Prune(0.5, "wanda"), Quantize(4, scale="mse", grid="odd"), {}),
    "sparsegpt x channel": (Prune(0.5, "sparsegpt"), Quantize(4, grid="odd"), {"blocksize": 8}),
}


def ipair(m, cfg, p, b, seed):
    P, Q, options = INTERFERING[cfg]
    return pair(m, P, Q, p, b, seed, options=options)
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(m=models(), cfg=st.sampled_from(sorted(INTERFERING)), p=st.floats(0.0, 0.95), b=st.integers(2, 8),
       seed=st.integers(0, 2**16), a=st.sampled_from([AS.A1, AS.WEIGHT]))
def test_i1_additivity_identity(m, cfg, p, b, seed, a):
    """Checks proofs/interference.md (I.1): A(Q→P) = A_disjoint + Δ_PQ − Δ_QP on actual tensors, where
    A_disjoint is measured on the disjoint reconstructions (each weight as its owner alone leaves it)."""
    r = ipair(m, cfg, p, b, seed)
    d_pq, d_qp = deltas(a, r)
    a_dis = (metric(a, r, "qf") + d_qp) - (metric(a, r, "pf") + d_pq)
    assert abs(advantage(a, r) - (a_dis + d_pq - d_qp)) <= 1e-12


@SETTINGS
@given(m=models(), cfg=st.sampled_from(["magnitude x g4-asym-mse", "wanda x g4-absmax", "wanda x channel-mse"]),
       p=st.floats(0.0, 0.95), b=st.integers(2, 8),
       seed=st.integers(0, 2**16))
def test_i2_quantize_first_has_no_interference(m, cfg, p, b, seed):
    """Checks proofs/interference.md (I.2): with a pruner that only zeroes entries of Q(φ) (no update),
    Δ_QP = 0 exactly, and the core's pih.interference agrees on weight units."""
    r = ipair(m, cfg, p, b, seed)
    assert np.array_equal(r["qf_weight"], r["qf_disjoint_weight"])
    assert np.array_equal(r["qf_output"], r["qf_disjoint_output"])


def test_i2_core_interference_matches_the_sim():
    """Checks proofs/interference.md (I.1 with pih.interference): on weight units, the core's Δ from per-weight
    owner maps and alone errors equals the simulation's Δ_PQ."""
    m = make_model(2, n_layers=1, shape=(8, 16), n_samples=24, dist="student_t")
    ps, qs, _ = INTERFERING["magnitude x g4-asym-mse"]
    keys = jax.numpy.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
    pf = pl.run_pipeline(m, (ps, qs), np.array([0.5, 3.0]), keys)
    qa = pl.run_pipeline(m, (qs,), np.array([3.0]), keys[1:])
    W0 = np.asarray(m.W).ravel()
    errors = np.stack([W0**2, (W0 - np.asarray(qa.W).ravel()) ** 2])
    total = (W0 - np.asarray(pf.W).ravel()) ** 2
    owners = np.asarray(pf.owners).ravel().astype(np.int64)
    core = interference(total, owners, errors)
    disj = np.where(np.asarray(pf.keep).ravel(), np.asarray(qa.W).ravel(), 0.0)
    assert abs(core - (total.sum() - ((W0 - disj) ** 2).sum())) <= 1e-12
    assert core < 0  # the MSE scale refitted after pruning helps (proofs/harma.md H1')


def test_i3_delta_depends_on_bits_found():
    """Checks proofs/interference.md (I.3 refuted in the simulation): with Wanda (which may remove a group's
    maximum) Δ_PQ at a fixed pruned set changes with the bit width — hypothesis finds a model where it even
    changes sign between two bit widths."""
    ps, qs, _ = INTERFERING["wanda x g4-absmax"]

    def sign_change(args):
        s, p = args
        m = make_model(s, n_layers=1, shape=(8, 16), n_samples=24, dist="student_t", act_outliers=2)
        d = [deltas(AS.WEIGHT, pair(m, ps, qs, p, b, s))[0] for b in (2, 3, 4, 6)]
        return min(d) < -1e-9 and max(d) > 1e-9

    s, p = find(st.tuples(st.integers(0, 500), st.sampled_from([0.25, 0.5, 0.75])), sign_change,
                settings=settings(database=None, derandomize=True, max_examples=300, deadline=None))
    assert sign_change((s, p))


def _delta_line(m, ps, qs, p, bits):
    d, eq, ep = [], [], 0.0
    for b in bits:
        r = pair(m, ps, qs, p, b, 0)
        d.append(deltas(AS.WEIGHT, r)[0])
        eq.append(-metric(AS.WEIGHT, r, "q"))
        ep = -metric(AS.WEIGHT, r, "p")
    return np.array(d), np.array(eq), ep


def test_i4_delta_over_eq_is_b_free_within_tolerance():
    """Checks proofs/interference.md (I.4, approximately, for absmax): on a 128×256 Student-t layer with Wanda
    pruning at p = 0.6 and absmax groups of 32, Δ_PQ(b)/E_Q(b) varies over b = 4..8 by at most 25% of its mean
    (measured: 14%), while Δ_PQ itself falls by more than a factor 100. At p = 0.3, where few groups lose their
    maximum, the ratio varies by more than a factor 2: the approximation needs many affected groups."""
    m = make_model(0, n_layers=1, shape=(128, 256), n_samples=64, dist="student_t", act_outliers=2)
    ps, qs = Prune(0.5, "wanda"), Quantize(4, 32, grid="odd")
    d, eq, _ = _delta_line(m, ps, qs, 0.6, (4, 5, 6, 8))
    ratio = d / eq
    assert np.ptp(ratio) <= 0.25 * abs(ratio.mean())
    assert abs(d[0]) > 100 * abs(d[-1])
    d, eq, _ = _delta_line(m, ps, qs, 0.3, (4, 5, 6, 8))
    ratio = d / eq
    assert np.abs(ratio).max() / np.abs(ratio).min() > 2


def test_delta_spread_over_bits_small_against_pruning_error():
    """Checks proofs/interference.md (the tolerance in which "Δ depends on p, not on b" holds): on the same layer,
    for Wanda x absmax-g32 and magnitude x asym-MSE-g32 at p in {0.3, 0.6} and b = 2..8,
    max_b Δ_PQ − min_b Δ_PQ <= 0.1 · E_P(p) (measured at most 0.074)."""
    m = make_model(0, n_layers=1, shape=(128, 256), n_samples=64, dist="student_t", act_outliers=2)
    for ps, qs in ((Prune(0.5, "wanda"), Quantize(4, 32, grid="odd")),
                   (Prune(0.5), Quantize(4, 32, False, "mse"))):
        for p in (0.3, 0.6):
            d, _, ep = _delta_line(m, ps, qs, p, (2, 3, 4, 5, 6, 8))
            assert np.ptp(d) <= 0.1 * ep


def test_mp1_mixed_precision_disjoint_layers_no_interference():
    """Checks proofs/interference.md (MP.1): two mixed-precision quantizers on complementary layer sets give the
    same model in both orders (A = 0, Δ = 0 exactly)."""
    m = make_model(4, n_layers=4, shape=(8, 16), n_samples=24, layer_scales=True)
    st_ = MixedPrecision((4,), grid="odd")
    hi, lo = np.array([8.0, 0, 8, 0]), np.array([0.0, 3, 0, 3])
    k = jax.numpy.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    a = pl.run_pipeline(m, (st_, st_), np.concatenate([hi, lo]), k, method_ids=(0, 1))
    b = pl.run_pipeline(m, (st_, st_), np.concatenate([lo, hi]), k[::-1], method_ids=(1, 0))
    assert np.array_equal(np.asarray(a.W), np.asarray(b.W))
    assert np.array_equal(np.asarray(a.owners), np.asarray(b.owners))
    ha = pl.run_pipeline(m, (st_,), hi, k[:1])
    la = pl.run_pipeline(m, (st_,), lo, k[1:])
    assert np.array_equal(np.asarray(a.output_err), np.asarray(ha.output_err) + np.asarray(la.output_err))


def test_block_removal_mild_quantization_no_interference():
    """Checks proofs/interference.md (block removal, t_Q <= t_P) and proofs/t1_ownership.md (T1.3): layer removal
    with an 8-bit quantizer inside the layers has Δ = 0 in both orders and A(Q→P) = 0."""
    m = make_model(3, n_layers=8, shape=(16, 32), n_samples=48, layer_scales=True)
    r = pair(m, Prune(0.5, "loss", "block"), Quantize(4, grid="odd"), 0.25, 8, 1)
    assert deltas(AS.A1, r) == (0.0, 0.0)
    assert advantage(AS.A1, r) == 0.0
