"""The simulation's OBS sweep (GPTQ with a kept mask) against a plain numpy reference on a realistic correlated
Hessian; unbiased stochastic rounding (A2b: E[Q(x)] = x); random tie-breaking in the rankings (``ranks``) of row
and N:M pruning. Each test names the fault it catches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sim  # noqa: F401  (float64)
from sim import mechanisms as mech


def _correlated(rows=16, cols=32, n=300, seed=0):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, 1)) * 3.0 + g.standard_normal((n, cols)) * (0.5 + g.random(cols))
    W = g.standard_normal((rows, cols))
    W[:, 16:24] *= 0.01  # a group of small weights: compensation pushed into its pruned positions dominates it
    return W, X.T @ X


def _params(G, bits, sym):
    if sym:
        s = np.abs(G).max(1) / (2.0 ** (bits - 1) - 1)
        return np.where(s > 0, s, 1.0), np.zeros(G.shape[0])
    lo, hi = np.minimum(G.min(1), 0), np.maximum(G.max(1), 0)
    s = (hi - lo) / (2.0**bits - 1)
    s = np.where(s > 0, s, 1.0)
    return s, np.round(-lo / s)


def _fq(x, s, z, bits, sym):
    lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if sym else (0.0, 2.0**bits - 1)
    return (np.clip(np.round(x / s) + z, lo, hi) - z) * s


def ref_gptq(W, H, bits, sym, keep, group, blocksize=16, lazy=True):
    """GPTQ with a kept mask, one column at a time; the grid of each group is fitted on the kept weights when the
    group's first column is reached, on W as of the start of the lazy block of ``blocksize`` columns holding that
    column (the reference code's convention, and the bridge's); ``lazy=False``: on the fully updated W instead
    (the convention the simulation had before, which this test must tell apart)."""
    o, i = W.shape
    g = i if group == "channel" else group
    Hd = H + np.diag(np.where(np.diag(H) == 0, 1.0, 0.0))
    Hd = Hd + 0.01 * np.mean(np.diag(Hd)) * np.eye(i)
    Hinv = np.linalg.inv(Hd)
    U = np.linalg.cholesky(0.5 * (Hinv + Hinv.T)).T
    W = W * keep
    for j in range(i):
        if j % blocksize == 0:
            W_block = W.copy()
        if j % g == 0:
            s, z = _params(((W_block if lazy else W) * keep)[:, j : j + g], bits, sym)
        q = _fq(W[:, j], s, z, bits, sym) * keep[:, j]
        err = (W[:, j] - q) / U[j, j]
        W = W - np.outer(err, U[j])
        W[:, j] = q
    return W * keep


@pytest.mark.parametrize("group", ["channel", 8])
@pytest.mark.parametrize("sym,bits", [(False, 2), (True, 3), (False, 4)])
def test_gptq_with_mask_matches_reference(group, sym, bits):
    W, H = _correlated()
    keep = np.random.default_rng(1).random(W.shape) >= 0.5
    ref = ref_gptq(W, H, bits, sym, keep, group)
    out, k = mech.obs_sweep(jnp.asarray(W), jnp.asarray(H), jax.random.PRNGKey(0), 0.0, bits,
                            quant={"group": group, "symmetric": sym, "scale": "absmax", "rounding": "nearest",
                                   "grid": "odd"}, keep=jnp.asarray(keep), blocksize=16)
    out = np.asarray(out)
    assert np.array_equal(np.asarray(k), keep) and (out[~keep] == 0).all()
    assert np.mean(np.abs(out - ref) > 1e-9 * np.abs(W).max()) < 0.005
    if group == 8:  # the second group of every lazy block: fitting it on the updated W is another result
        eager = ref_gptq(W, H, bits, sym, keep, group, lazy=False)
        assert np.mean(np.abs(out - eager)[:, 24:32] > 1e-6) > 0.05


def test_reference_sees_a_group_fitted_on_pruned_positions():
    """The fault the test above must catch is visible on this data: fitting group 3 (the first of the second lazy
    block, whose pruned positions carry the first block's compensation) on W instead of W * keep changes many of
    its weights."""
    W, H = _correlated()
    keep = np.random.default_rng(1).random(W.shape) >= 0.5
    ref = ref_gptq(W, H, 2, False, keep, 8)
    o, i = W.shape
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(i)
    Hinv = np.linalg.inv(Hd)
    U = np.linalg.cholesky(0.5 * (Hinv + Hinv.T)).T
    Wb = W * keep
    for j in range(i):
        if j % 16 == 0:
            W_block = Wb.copy()
        if j % 8 == 0:
            s, z = _params(W_block[:, j : j + 8], 2, False)  # the fault: pruned positions included
        q = _fq(Wb[:, j], s, z, 2, False) * keep[:, j]
        err = (Wb[:, j] - q) / U[j, j]
        Wb = Wb - np.outer(err, U[j])
        Wb[:, j] = q
    assert np.mean(np.abs((Wb * keep) - ref)[:, 16:24] > 1e-6) > 0.05  # the main test tolerates 0.5 % overall


def test_stochastic_rounding_is_unbiased():
    """A2b: E[Q(x)] = x for the simulation's stochastic rounding (mean error within 4.5 standard errors of 0 at every
    interior value over 800 keys; noise U(0, 0.9) would bias it by −0.05 step)."""
    x = jnp.asarray(np.random.default_rng(0).uniform(-2.5, 2.5, 200))
    s, z, bits = 0.37, 0.0, 4.0
    keys = jax.random.split(jax.random.PRNGKey(0), 800)
    q = jax.vmap(lambda k: mech.fake_quant(x, s, z, bits, True, "stochastic", k))(keys)
    err = (np.asarray(q) - np.asarray(x)) / s
    inside = (np.abs(np.asarray(x)) < 2.0) & (err.std(0) > 1e-3)
    zscore = err.mean(0) / (err.std(0) / np.sqrt(800))
    assert inside.sum() > 100 and np.abs(zscore[inside]).max() < 4.5
    assert abs(err.mean(0)[inside].mean()) < 0.01


def test_ranks_break_ties_at_random():
    """ranks(): all-equal scores in N:M groups and rows must be ordered by a seeded random draw, not by index (an
    index order always keeps the same positions of every group, a spurious structure)."""
    W = jnp.ones((256, 16))
    Wn, keep = mech.prune_nm(W, None, jax.random.PRNGKey(0), 2, 4)
    per_pos = np.asarray(keep).reshape(256, 4, 4).mean((0, 1))
    assert (per_pos > 0.4).all() and (per_pos < 0.6).all()
    _, keep_rows = mech.prune_rows(jnp.ones((64, 8)), jnp.eye(8), 0.5, jax.random.PRNGKey(1))
    pruned = ~np.asarray(keep_rows).any(1)
    assert pruned.sum() == 32 and 0.3 < pruned[:32].mean() < 0.7


def test_wanda_mask_is_its_definition():
    """Wanda in the simulation: per output row, the weights of least |W_ij|·||X_j|| with ||X_j|| = sqrt(H_jj) (not
    H_jj itself), checked against an independent numpy ranking."""
    g = np.random.default_rng(3)
    W = g.standard_normal((16, 32))
    X = g.standard_normal((32, 200)) * g.lognormal(0, 1.5, (32, 1))
    H = X @ X.T
    _, keep = mech.prune_unstructured(jnp.asarray(W), jnp.asarray(H), 0.5, jax.random.PRNGKey(0), "wanda", "row")
    score = np.abs(W) * np.sqrt(np.diag(H))[None, :]
    expect = np.ones(W.shape, bool)
    for i in range(16):
        expect[i, np.argsort(score[i])[:16]] = False
    assert np.array_equal(np.asarray(keep), expect)
