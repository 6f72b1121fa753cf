"""Theorem 1 (ownership identity) on actual compressed tensors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, find, given, settings
from hypothesis import strategies as st
from sim_testkit import DISJOINT_CONFIGS, advantage, models, pair

from pih import Prune, Quantize, disjoint_selectivity, theorem1
from sim import assumptions as AS
from sim import pipeline as pl
from sim.tensors import make_model

LINEAR_SETS = [AS.A1, AS.A1_LAMBDA, AS.WEIGHT]


def t1_prediction(a, r, lam) -> float:
    """Theorem 1 from the errors of each method alone on φ and the two owner maps (row units)."""
    kind = a.error
    errors = np.stack([r[f"removal_{kind}"].ravel(), r[f"q_{kind}"].ravel()])
    dense = (r["dense_output"] if kind == "output" else r["removal_weight"]).ravel()
    t1 = theorem1(errors, r["qf_row_owner"].ravel().astype(np.int64), r["pf_row_owner"].ravel().astype(np.int64),
                  lam.ravel())
    return t1.advantage / float(lam.ravel() @ dense)


def residual(a, m, cfg, p, b, seed):
    ps, qs = cfg
    lam = np.asarray(a.sensitivity(m.W.shape[:2], seed))
    r = pair(m, ps, qs, p, b, seed, lam)
    return advantage(a, r, lam) - t1_prediction(a, r, lam), r


def test_configs_are_disjoint_by_the_core():
    """Checks proofs/t1_ownership.md: the configurations used here are the ones the core calls disjoint."""
    specs = {"row-magnitude x rtn": (Prune(0.5, structure="row"), Quantize(4)),
             "row-loss x rtn-asym-mse": (Prune(0.5, "loss", "row"), Quantize(4, 4, False, "mse")),
             "row-loss x gptq": (Prune(0.5, "loss", "row"), Quantize(4, update="gptq")),
             "row-loss x stochastic": (Prune(0.5, "loss", "row"), Quantize(4, rounding="stochastic")),
             "block x rtn-g4": (Prune(0.5, "loss", "block"), Quantize(4, 4))}
    assert set(specs) == set(DISJOINT_CONFIGS)
    for name, (p, q) in specs.items():
        assert disjoint_selectivity(p, q), name
        assert pl.stage_from_spec(p)[0].structure == DISJOINT_CONFIGS[name][0].structure


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(m=models(), cfg=st.sampled_from(sorted(DISJOINT_CONFIGS)), p=st.floats(0.0, 0.95),
       b=st.integers(2, 8), seed=st.integers(0, 2**16), a=st.sampled_from(LINEAR_SETS))
def test_t1_identity_on_disjoint_pairs(m, cfg, p, b, seed, a):
    """Checks proofs/t1_ownership.md (T1): for every disjointly selective pair, A(Q→P) measured on the compressed
    tensors equals the sum over owner-changing units of λ_u (e[b_u] − e[a_u]) to 1e-10."""
    res, _ = residual(a, m, DISJOINT_CONFIGS[cfg], p, b, seed)
    assert abs(res) <= 1e-10


def test_t1_no_owner_change_block_removal_mild_quantization():
    """Checks proofs/t1_ownership.md (T1.1, T1.3): block removal with 8-bit quantization changes no owner, so
    A(Q→P) = 0 exactly (not approximately)."""
    m = make_model(3, n_layers=8, shape=(16, 32), n_samples=48, layer_scales=True)
    ps, qs = Prune(0.5, "loss", "block"), Quantize(4, grid="odd")
    for p in (0.125, 0.25, 0.5):
        r = pair(m, ps, qs, p, 8, seed=1)
        assert (r["pf_row_owner"] == r["qf_row_owner"]).all()
        assert advantage(AS.A1, r) == 0.0


def test_t1_identity_catches_a_non_disjoint_quantizer():
    """Checks proofs/t1_ownership.md: dropping disjoint selectivity (a per-tensor scale under row pruning: the
    quantizer's unit is coarser than the pruner's) is caught: hypothesis finds a residual far above 1e-10."""
    broken = (Prune(0.5, structure="row"), Quantize(4, "tensor", grid="odd"))
    assert not disjoint_selectivity(Prune(0.5, structure="row"), Quantize(4, "tensor"))

    def fails(args):
        m, p, b = args
        return abs(residual(AS.A1, m, broken, p, b, 0)[0]) > 1e-6

    m, p, b = find(st.tuples(models(), st.floats(0.05, 0.9), st.integers(2, 4)), fails,
                   settings=settings(max_examples=200, database=None, derandomize=True, deadline=None))
    assert fails((m, p, b))


def test_t1_identity_catches_a_dropped_a1():
    """Checks proofs/t1_ownership.md: with A1 dropped (perplexity-like M = −exp(5·error)), the identity fails
    on the same tensors and mechanisms where it holds under A1."""
    ps, qs = DISJOINT_CONFIGS["row-magnitude x rtn"]
    for seed in range(20):  # the first model where some row changes owner
        m = make_model(seed, n_layers=2, shape=(8, 16), n_samples=24, dist="student_t")
        r = pair(m, ps, qs, 0.5, 2, seed=0)
        if (r["pf_row_owner"] != r["qf_row_owner"]).any():
            break
    lam = np.ones(r["dense_output"].shape)
    assert (r["pf_row_owner"] != r["qf_row_owner"]).any()
    assert abs(advantage(AS.A1, r) - t1_prediction(AS.A1, r, lam)) <= 1e-10
    assert abs(advantage(AS.PPL, r) - t1_prediction(AS.PPL, r, lam)) > 1e-3


@pytest.mark.parametrize("rotation_scope", ["model"])
def test_t1_identity_with_hadamard_rotation(rotation_scope):
    """Checks proofs/t1_ownership.md: a Hadamard rotation fused into the model keeps rows as units (t_Q = row),
    and the identity holds on the rotated tensors."""
    m = make_model(5, n_layers=2, shape=(8, 16), n_samples=24, act_outliers=1)
    ps, qs = Prune(0.5, "loss", "row"), Quantize(4, rotation="hadamard", grid="odd")
    for p, b in ((0.25, 3), (0.5, 2), (0.75, 4)):
        r = pair(m, ps, qs, p, b, 0, options={"rotation_scope": rotation_scope})
        lam = np.ones(r["dense_output"].shape)
        assert abs(advantage(AS.A1, r) - t1_prediction(AS.A1, r, lam)) <= 1e-10


@example(p=0.5, b=2)
@settings(max_examples=10)
@given(p=st.floats(0.1, 0.9), b=st.integers(2, 8))
def test_t1_theorem_and_direct_sums_agree_in_the_core(p, b):
    """Checks proofs/t1_ownership.md: on measured errors and owners, pih.theorem1 equals pih.direct_advantage."""
    from pih import direct_advantage

    m = make_model(1, n_layers=2, shape=(8, 16), n_samples=24)
    r = pair(m, *DISJOINT_CONFIGS["row-magnitude x rtn"], p, b)
    e = np.stack([r["removal_output"].ravel(), r["q_output"].ravel()])
    a_, b_ = r["qf_row_owner"].ravel().astype(np.int64), r["pf_row_owner"].ravel().astype(np.int64)
    assert abs(theorem1(e, a_, b_).advantage - direct_advantage(e, a_, b_)) <= 1e-9 * max(1.0, e.sum())
