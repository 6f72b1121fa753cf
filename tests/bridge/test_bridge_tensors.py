"""Tensor-level compressors: grids, RTN, GPTQ, magnitude, Wanda, SparseGPT."""

import pytest
import torch

from pih import PihError
from pih.bridge.prune import magnitude, smallest_mask, sparsegpt, wanda
from pih.bridge.quant import find_params, gptq, rtn, rtn_grid


def _layer(rows=32, cols=64, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    A = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ A  # correlated inputs
    H = 2 * X.t() @ X / n
    return W, X, H


def _out_err(W, Wq, X):
    return float(((W - Wq) @ X.t()).pow(2).sum() / (W @ X.t()).pow(2).sum())


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("group", ["channel", "tensor", 16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_grid_levels_and_zero(sym, group, bits):
    W, _, _ = _layer()
    W[0, :5] = 0
    Wq, grid = rtn(W, bits, group, sym)
    assert torch.all(Wq[0, :5] == 0)  # zero is on every grid
    s, z = grid.expand()
    q = torch.round(Wq / s + z)
    assert q.min() >= 0 and q.max() <= 2**bits - 1
    assert torch.allclose(s * (q - z), Wq, atol=1e-6)
    assert torch.all(grid.on_grid(Wq))
    # each group uses at most 2^bits levels
    assert len(torch.unique(Wq[1, :16])) <= 2**bits


def test_mse_scale_not_worse_than_absmax():
    W, _, _ = _layer()
    for bits in (2, 3, 4):
        e_abs = float((rtn(W, bits, "channel", False, "absmax")[0] - W).pow(2).sum())
        e_mse = float((rtn(W, bits, "channel", False, "mse")[0] - W).pow(2).sum())
        assert e_mse <= e_abs * 1.0001


def test_group_must_divide():
    W, _, _ = _layer()
    with pytest.raises(PihError, match="group"):
        rtn_grid(W, 4, 48)


def test_find_params_symmetric_gptq_convention():
    x = torch.tensor([[-1.0, 0.5, 0.25]])
    s, z = find_params(x, 4, True)
    assert float(z) == 8 and abs(float(s) - 2 / 15) < 1e-7


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group", ["channel", 16])
def test_gptq_beats_rtn_on_output_error(act_order, group):
    W, X, H = _layer()
    for bits in (2, 3, 4):
        Wr, _ = rtn(W, bits, group, False)
        Wg, grid = gptq(W, H, bits, group, False, act_order=act_order, blocksize=16)
        assert _out_err(W, Wg, X) < _out_err(W, Wr, X)
        assert torch.all(grid.on_grid(Wg))  # the returned grid describes the result


def test_gptq_keeps_mask_and_stochastic_rounding_is_seeded():
    W, X, H = _layer()
    mask = magnitude(W, 0.5)
    Wg, _ = gptq(W.masked_fill(mask, 0), H, 3, mask=mask)
    assert torch.equal(Wg == 0, (Wg == 0) | mask) and torch.all(Wg[mask] == 0)
    a = rtn(W, 3, rounding="stochastic", generator=torch.Generator().manual_seed(1))[0]
    b = rtn(W, 3, rounding="stochastic", generator=torch.Generator().manual_seed(1))[0]
    c = rtn(W, 3, rounding="stochastic", generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_smallest_mask_exact_count_and_random_ties():
    m = torch.zeros(1000)
    a = smallest_mask(m, 300, None, torch.Generator().manual_seed(0))
    b = smallest_mask(m, 300, None, torch.Generator().manual_seed(1))
    assert int(a.sum()) == 300 and int(b.sum()) == 300
    assert not torch.equal(a, b)  # ties broken at random, not by index
    assert not torch.equal(a, torch.arange(1000) < 300)


def test_magnitude_wanda_counts_and_nm():
    W, X, _ = _layer()
    mk = magnitude(W, 0.5)
    assert int(mk.sum()) == W.numel() // 2
    assert float(W[mk].abs().max()) <= float(W[~mk].abs().min())
    norm2 = (X**2).mean(0)
    mw = wanda(W, norm2, 0.25)
    assert torch.all(mw.sum(1) == W.shape[1] // 4)  # per output row
    nm = wanda(W, norm2, 0.5, nm=(2, 4))
    assert torch.all(nm.reshape(W.shape[0], -1, 4).sum(-1) == 2)
    with pytest.raises(PihError, match="M=3 does not divide"):
        magnitude(W, 2 / 3, nm=(1, 3))


def test_existing_mask_is_kept_and_counts():
    W, X, H = _layer()
    first = magnitude(W, 0.3)
    second = wanda(W, (X**2).mean(0), 0.5, existing=first)
    assert torch.all(second[first])
    W2, m2 = sparsegpt(W.masked_fill(first, 0), H, 0.5, existing=first, blocksize=16)
    assert torch.all(m2[first]) and torch.all(W2[m2] == 0)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_mask_and_beats_magnitude(nm):
    W, X, H = _layer()
    Ws, m = sparsegpt(W, H, 0.5, nm=nm, blocksize=16)
    assert torch.all(Ws[m] == 0)
    if nm is None:
        assert torch.all(m.reshape(32, 4, 16).sum((0, 2)) == 32 * 16 // 2)  # per 16-column block
    else:
        assert torch.all(m.reshape(32, -1, 4).sum(-1) == 2)
    assert _out_err(W, Ws, X) < _out_err(W, W.masked_fill(magnitude(W, 0.5, nm=nm), 0), X)
    with pytest.raises(PihError, match="M=3"):
        sparsegpt(W, H, 2 / 3, nm=(1, 3))


def test_gptq_group_grids_are_fitted_as_the_reference_fits_them():
    """Groups smaller than the lazy block: the reference GPTQ fits each group's grid on W as of the block's start
    (the in-block updates live on a copy), so every group of the first block gets the grid of the original
    weights, and a later block's group the grid of W after the earlier blocks' updates only. A grid fitted on the
    in-block updated weights (our earlier variant) fails this."""
    W, X, H = _layer()
    g, block = 8, 32
    _, grid = gptq(W, H, 3, g, False, blocksize=block)
    for k in range(block // g):  # the groups of the first block: the original weights
        s, z = find_params(W[:, k * g : (k + 1) * g], 3, False)
        assert torch.equal(grid.scale[:, k], s) and torch.equal(grid.zero[:, k], z)
    assert W.shape[1] > block  # and a group of the second block differs from the original weights' grid
    s2, _ = find_params(W[:, block : block + g], 3, False)
    assert not torch.equal(grid.scale[:, block // g], s2)
