"""The bridge's OBS kernels against plain numpy references (column by column, float64, no lazy batching) on a
realistic correlated Hessian, where a kernel that leaks compensation into pruned weights, skips the in-block
update, drops the damping or fits a group grid on pruned positions gives visibly different weights (an
H = I + 0.1 Hessian hides such faults: the leaked compensation rounds to zero). Also: unbiased stochastic rounding
(A2b: E[Q(x)] = x) and random tie-breaking in the bridge's rankings."""

import numpy as np
import pytest
import torch

from pih.bridge.prune import smallest_mask
from pih.bridge.quant import find_params, gptq, rtn


def _correlated(rows=24, cols=48, n=400, seed=0, factor=3.0):
    """Inputs with a strong common factor (every pair of columns correlated), as LLM activations are."""
    g = np.random.default_rng(seed)
    common = g.standard_normal((n, 1)) * factor
    X = common + g.standard_normal((n, cols)) * (0.5 + g.random(cols))
    W = g.standard_normal((rows, cols))
    return W, X, 2 * X.T @ X / n


def _qdq(x, scale, zero, maxq):
    return scale * (np.clip(np.round(x / scale) + zero, 0, maxq) - zero)


def _params(x, bits, sym):
    """GPTQ's grid convention per row (pih.bridge.quant.find_params, numpy, no MSE search)."""
    maxq = 2**bits - 1
    xmin = np.minimum(x.min(1), 0)
    xmax = np.maximum(x.max(1), 0)
    if sym:
        xmax = np.maximum(np.abs(xmin), xmax)
        xmin = np.where(xmin < 0, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin, xmax = np.where(both0, -1, xmin), np.where(both0, 1, xmax)
    scale = (xmax - xmin) / maxq
    zero = np.full_like(scale, (maxq + 1) / 2) if sym else np.round(-xmin / scale)
    return scale, zero


def _chol_inv_upper(H, percdamp=0.01):
    H = H.copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    H[np.diag_indices_from(H)] += percdamp * np.mean(np.diag(H))
    return np.linalg.cholesky(np.linalg.inv(H)).T  # upper U with H^-1 = U^T U


def ref_gptq_channel(W, H, bits, sym, pruned):
    """Per-channel GPTQ with a kept mask, one column at a time (the OBS recursion written out)."""
    W = np.where(pruned, 0.0, W.astype(float))
    U = _chol_inv_upper(H)
    scale, zero = _params(W, bits, sym)
    maxq = 2**bits - 1
    Q = np.zeros_like(W)
    for j in range(W.shape[1]):
        w = W[:, j].copy()
        q = np.where(pruned[:, j], 0.0, _qdq(w, scale, zero, maxq))
        err = (w - q) / U[j, j]
        W[:, j:] -= np.outer(err, U[j, j:])
        Q[:, j] = q
    return Q


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 4])
def test_gptq_with_a_mask_matches_the_column_by_column_reference(sym, bits):
    """GPTQ after pruning (P→Q): the bridge's lazy-batch kernel equals the written-out recursion (float32 vs
    float64), pruned weights stay exactly 0, and the reference's own leaked-compensation twin differs."""
    W, X, H = _correlated()
    g = np.random.default_rng(1)
    pruned = g.random(W.shape) < 0.5
    ref = ref_gptq_channel(W, H, bits, sym, pruned)
    Wt = torch.from_numpy(np.where(pruned, 0.0, W)).float()
    out, _ = gptq(Wt, torch.from_numpy(H).float(), bits, "channel", sym, blocksize=16, mask=torch.from_numpy(pruned))
    out = out.double().numpy()
    assert (out[pruned] == 0).all()
    scale = np.abs(W).max()
    # float32 against float64: the same grid points except where a value sits on a rounding boundary
    frac_diff = np.mean(np.abs(out - ref) > 1e-4 * scale)
    assert frac_diff < 0.01, frac_diff
    # a kernel whose pruned weights leak (no mask at quantization) is far from the reference
    leak = ref_gptq_channel(W, H, bits, sym, np.zeros_like(pruned))
    assert np.mean(np.abs(leak - ref) > 1e-4 * scale) > 0.3


def test_gptq_group_grid_is_fitted_on_kept_weights_only():
    """A group's grid comes from the kept weights of the group (pruned ones are forced to 0 and must not widen the
    range): give the pruned positions of the first lazy block huge values; the first block's group grids must be
    those of the kept weights alone."""
    W, X, H = _correlated()
    g, block = 8, 16
    pruned = np.zeros(W.shape, bool)
    pruned[:, 1::3] = True
    Wbig = np.where(pruned, 1e3, W)
    _, grid = gptq(torch.from_numpy(Wbig).float(), torch.from_numpy(H).float(), 3, g, False, blocksize=block,
                   mask=torch.from_numpy(pruned))
    Wk = torch.from_numpy(np.where(pruned, 0.0, W)).float()
    for k in range(block // g):
        s, z = find_params(Wk[:, k * g : (k + 1) * g], 3, False)
        assert torch.allclose(grid.scale[:, k], s) and torch.equal(grid.zero[:, k], z)


def test_gptq_damping_matters_on_a_near_singular_hessian():
    """A rank-deficient H (fewer tokens than inputs): the damped kernel equals the damped reference; without the
    damping the recursion would not even be defined."""
    W, X, _ = _correlated(n=20)
    H = 2 * X.T @ X / 20
    pruned = np.zeros(W.shape, bool)
    ref = ref_gptq_channel(W, H, 4, False, pruned)
    out, _ = gptq(torch.from_numpy(W).float(), torch.from_numpy(H).float(), 4, "channel", False, blocksize=16)
    assert np.mean(np.abs(out.double().numpy() - ref) > 1e-3 * np.abs(W).max()) < 0.02


def test_stochastic_rounding_is_unbiased():
    """A2b: E[Q(x)] = x for stochastic rounding (the mean error over many seeded draws is within 4 standard errors
    of 0 for every weight; a rounding with noise U(0, 0.9) instead of U(0, 1) is biased by −0.05 step and fails)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 64, generator=g, dtype=torch.float64)
    draws = torch.stack([rtn(W, 3, "channel", False, rounding="stochastic", generator=torch.Generator()
                             .manual_seed(s))[0] for s in range(600)])
    _, grid = rtn(W, 3, "channel", False)
    step = grid.expand()[0]
    interior = (W > -grid.zero[:, :1] * grid.scale[:, :1] + step) & (W < (grid.maxq - grid.zero[:, :1]) *
                                                                     grid.scale[:, :1] - step)
    err = (draws - W) / step
    interior &= err.std(0) > 1e-3  # weights on a grid point round to themselves: no noise to average
    z = err.mean(0) / (err.std(0) / 600**0.5)
    assert interior.sum() > 100
    assert z[interior].abs().max() < 4.5
    assert abs(float(err.mean(0)[interior].mean())) < 0.01


def test_tie_breaking_is_random_not_by_index():
    """All-equal scores: which entries are taken must be spread over the positions (seeded random order), not the
    first ones by index."""
    m = torch.ones(200, 8)
    taken = torch.stack([smallest_mask(m, 4, -1, torch.Generator().manual_seed(s)) for s in range(5)])
    per_pos = taken.float().mean((0, 1))
    assert (per_pos > 0.35).all() and (per_pos < 0.65).all()
    whole = smallest_mask(torch.ones(64, 64), 2048, None, torch.Generator().manual_seed(0))
    assert 0.4 < whole[:32].float().mean() < 0.6


def test_wanda_mask_is_its_definition():
    """Wanda prunes, in each output row, the weights of least |W_ij|·||X_j|| (the input column's norm, not its
    square): the mask equals the k smallest of that score per row, computed here independently."""
    from pih.bridge.prune import wanda

    g = np.random.default_rng(3)
    W = g.standard_normal((16, 32))
    norm2 = g.lognormal(0, 1.5, 32)  # widely spread input norms: norm and norm² rank differently
    mask = wanda(torch.from_numpy(W).float(), torch.from_numpy(norm2).float(), 0.5).numpy()
    score = np.abs(W) * np.sqrt(norm2)[None, :]
    expect = np.zeros_like(mask)
    for i in range(16):
        expect[i, np.argsort(score[i])[:16]] = True
    assert np.array_equal(mask, expect)


def test_second_pruning_stage_takes_the_earlier_mask_first():
    """Pruning an already pruned matrix (30 % pruned earlier) to 50 %: the earlier mask counts first, so exactly 50 %
    end up pruned, even when other weights are exactly zero too (free zeros of a low-bit quantizer: they tie with
    the pruned ones at |w| = 0, and must not be taken in their place)."""
    from pih.bridge.prune import magnitude, wanda

    g = np.random.default_rng(4)
    W = g.standard_normal((32, 64))
    u = g.random(W.shape)
    existing = u < 0.3
    W[existing] = 0.0
    W[(u >= 0.3) & (u < 0.6)] = 0.0  # free zeros, not pruned
    Wt, E = torch.from_numpy(W).float(), torch.from_numpy(existing)
    for mask in (magnitude(Wt, 0.5, existing=E, gen=torch.Generator().manual_seed(0)),
                 wanda(Wt, torch.ones(64), 0.5, existing=E, gen=torch.Generator().manual_seed(0))):
        assert bool(mask[E].all())
        assert mask.shape == Wt.shape and int(mask.sum()) == W.size // 2
