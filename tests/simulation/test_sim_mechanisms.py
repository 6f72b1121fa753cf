"""The mechanisms: conformance checks, exact counts, masks kept, weight updates, rotation, joint mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pih import PihError, Prune, Quantize
from pih.methods import n_pruned
from sim import mechanisms as mech
from sim import pipeline as pl
from sim.checks import check_pruner, check_quantizer
from sim.kernels import SimOptions
from sim.tensors import make_model

K = jax.random.PRNGKey


@pytest.mark.parametrize("criterion,per", [("magnitude", "tensor"), ("magnitude", "row"), ("wanda", "row")])
def test_unstructured_pruners_conform(criterion, per):
    exact = per == "tensor"
    check_pruner(jax.jit(lambda W, H, r, k: mech.prune_unstructured(W, H, r, k, criterion, per)), exact_count=exact)


def test_sparsegpt_conforms_with_updates():
    """SparseGPT removes int(ratio·rows·B) weights per block of B columns, so the total may differ by rounding."""
    f = jax.jit(lambda W, H, r, k: mech.obs_sweep(W, H, k, r, prune="unstructured", blocksize=8))
    check_pruner(f, exact_count=False, updates=True)


def test_index_tie_breaking_is_caught():
    """A pruner that breaks magnitude ties by index (a stable sort) fails the conformance check."""

    def broken(W, H, r, k):
        order = jnp.argsort(jnp.abs(W).ravel(), stable=True)
        n = W.size
        keep = jnp.ones(n, bool).at[order[: n_pruned(r, n)]].set(False).reshape(W.shape)
        return W * keep, keep

    with pytest.raises(AssertionError, match="ties"):
        check_pruner(broken)


@pytest.mark.parametrize("group,symmetric,scale,rounding,grid", [
    ("channel", True, "absmax", "nearest", "full"), ("channel", True, "absmax", "nearest", "odd"),
    (8, False, "mse", "nearest", "full"), ("tensor", True, "mse", "nearest", "full"),
    ("tensor", True, "mse", "nearest", "odd"), (8, True, "absmax", "stochastic", "full"),
    (8, True, "absmax", "stochastic", "odd")])
def test_rtn_quantizers_conform(group, symmetric, scale, rounding, grid):
    f = jax.jit(lambda W, b, k, keep: mech.quantize_rtn(W, b, k, group, symmetric, scale, rounding, keep, grid))
    check_quantizer(f, group=group if isinstance(group, int) else None)


def test_gptq_conforms_and_keeps_mask():
    q = {"group": 8, "symmetric": False, "scale": "absmax", "rounding": "nearest"}
    f = jax.jit(lambda W, b, k, keep: mech.obs_sweep(W, jnp.eye(W.shape[1]) + 0.1, k, 0.0, b, quant=q, keep=keep,
                                                     blocksize=8)[0])
    check_quantizer(f, group=8)


def test_quantizer_losing_the_mask_is_caught():
    """A quantizer that re-fills pruned weights (asymmetric grid with a fractional zero point) is caught."""

    def broken(W, b, k, keep):
        lo, hi = W.min(), W.max()
        s = (hi - lo) / (2**b - 1)
        return jnp.round((W - lo) / s) * s + lo  # 0 is not on this grid

    with pytest.raises(AssertionError, match="mask"):
        check_quantizer(broken)


_NM = jax.jit(lambda W, H, k: mech.prune_nm(W, H, k, 2, 4))
_ROWS = jax.jit(lambda W, H, p, k: mech.prune_rows(W, H, p, k, "loss"))


@settings(max_examples=15)
@given(p=st.floats(0.0, 0.95), seed=st.integers(0, 1000))
def test_nm_and_row_structures(p, seed):
    m = make_model(seed, shape=(8, 16), n_samples=24)
    W, X = m.W[0], m.X[0]
    H = X @ X.T
    _, keep = _NM(W, H, K(seed))
    assert (np.asarray(keep).reshape(8, 4, 4).sum(-1) == 2).all()
    _, keep = _ROWS(W, H, p, K(seed))
    rows = np.asarray(keep).all(1)
    assert (np.asarray(keep).any(1) == rows).all() and (~rows).sum() == n_pruned(p, 8)


def test_weight_updates_reduce_output_error():
    """SparseGPT's update beats magnitude and Wanda; GPTQ beats round-to-nearest (output error, same settings;
    heavy-tailed channel scales, no massive outlier channels: with those, 1% damping of the mean diagonal
    over-regularises the ordinary channels and Wanda can win)."""
    m = make_model(0, shape=(32, 64), n_samples=128, dist="student_t")
    W, X = m.W[0], m.X[0]
    H = X @ X.T

    def out(Wn):
        return float(jnp.sum(((W - Wn) @ X) ** 2))

    sg, _ = jax.jit(lambda W, H: mech.obs_sweep(W, H, K(0), 0.5, prune="unstructured", blocksize=16))(W, H)
    mg, _ = mech.prune_unstructured(W, H, 0.5, K(0), "magnitude")
    wd, _ = mech.prune_unstructured(W, H, 0.5, K(0), "wanda", "row")
    assert out(sg) < out(wd) < out(mg)
    q = {"group": "channel", "symmetric": True, "scale": "absmax", "rounding": "nearest"}
    gq, _ = jax.jit(lambda W, H: mech.obs_sweep(W, H, K(0), 0.0, 3, quant=q, blocksize=16))(W, H)
    assert out(gq) < out(mech.quantize_rtn(W, 3, K(0)))


def test_joint_mode_exact_sparsity_and_grid():
    """SparseGPT's joint mode: the block sparsity is exact and every kept row sits on its channel grid."""
    m = make_model(1, shape=(16, 32), n_samples=64)
    W, X = m.W[0], m.X[0]
    q = {"group": "channel", "symmetric": True, "scale": "absmax", "rounding": "nearest"}
    Wj, keep = jax.jit(lambda W, H: mech.obs_sweep(W, H, K(0), 0.5, 3, prune="unstructured", quant=q,
                                                   blocksize=8))(W, X @ X.T)
    keep = np.asarray(keep)
    assert (~keep).sum() == 16 * 32 // 2 and (np.asarray(Wj)[~keep] == 0).all()
    for row in np.asarray(Wj):
        assert len(np.unique(row[row != 0])) <= 7


def test_multistage_and_owners():
    """P→Q→P pipelines run, the second pruning adds to the first, owners follow the last method of each weight."""
    m = make_model(2, n_layers=2, shape=(8, 16), n_samples=24)
    P1, Q = pl.stage_from_spec(Prune(0.3))[0], pl.stage_from_spec(Quantize(4))[0]
    out = pl.run_pipeline_jit(m, (P1, Q, P1), np.array([0.3, 4.0, 0.5]), K(0), method_ids=(0, 1, 2))
    keep, own = np.asarray(out.keep), np.asarray(out.owners)
    assert (~keep).sum() == 2 * n_pruned(0.5, 128)  # the second stage counts the first one's zeros
    assert set(np.unique(own[keep])) == {1}
    assert set(np.unique(own[~keep])) <= {0, 2}


def test_rotation_model_scope_is_function_preserving():
    """With the rotation fused into the model, the reported output error equals the error of the returned weights
    in the original basis, and the sparsity lives in the rotated basis."""
    m = make_model(3, n_layers=1, shape=(8, 16), n_samples=24, act_outliers=1)
    P, Q = pl.stage_from_spec(Prune(0.5))[0], pl.stage_from_spec(Quantize(3, rotation="hadamard", grid="odd"))[0]
    out = pl.run_pipeline_jit(m, (P, Q), np.array([0.5, 3.0]), K(0))
    D = m.W - out.W
    assert np.allclose(np.asarray(jnp.sum((D @ m.X) ** 2, axis=2)), np.asarray(out.output_err), rtol=1e-10)
    R = mech.hadamard(16)
    assert np.allclose(np.asarray(R @ R.T), np.eye(16), atol=1e-12)
    assert (np.abs(np.asarray(out.W @ R))[~np.asarray(out.keep)] < 1e-12).all()


def test_bad_inputs_name_the_argument():
    with pytest.raises(PihError, match="structure="):
        pl.stage_from_spec(Prune(0.5, structure="head"))
    with pytest.raises(PihError, match="bits="):
        pl.stage_from_spec(Quantize(1))
    with pytest.raises(PihError, match="reference="):
        SimOptions(reference="oracle")
    with pytest.raises(PihError, match="offgrid="):
        SimOptions(offgrid="mask_only")
    with pytest.raises(PihError, match="options="):
        SimOptions.of({"after_quant": "keep"})
    with pytest.raises(PihError, match="structure="):  # the simulation's Wanda ranks weights, not rows
        pl.run_pipeline(make_model(0), (Prune(0.5, "wanda", "row"),), None, K(0))
