"""Conformance checks every pruner and quantizer must pass (the idea of scikit-learn's ``check_estimator``).

``check_pruner(fn)`` and ``check_quantizer(fn)`` call a mechanism on small generated tensors and raise
``AssertionError`` naming the violated property. The simulation's own mechanisms pass them; the tests keep
deliberately broken variants (index tie-breaking, a quantizer that loses the sparsity mask) that they catch.

Signatures: ``pruner(W, H, ratio, key) -> (W', keep)``; ``quantizer(W, bits, key, keep) -> W'``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pih.methods import n_pruned

from .tensors import activations, layer


def _inputs(seed: int, shape=(16, 32)):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    W = layer(k1, shape, "student_t", 4.0)
    X = activations(k2, shape[1], 48, 1.0, 1)
    return W, X @ X.T


def check_pruner(prune, ratios=(0.0, 0.25, 0.5, 0.9), exact_count: bool = True, updates: bool = False) -> None:
    """A pruner zeroes exactly the weights its mask removes, removes ``pih.methods.n_pruned(ratio, n)`` =
    int(ratio·n) of them (``exact_count``),
    leaves the others unchanged (unless ``updates``), is deterministic by key, and breaks ties at random."""
    W, H = _inputs(0)
    n = W.size
    for r in ratios:
        Wp, keep = prune(W, H, r, jax.random.PRNGKey(1))
        Wp, keep = np.asarray(Wp), np.asarray(keep, bool)
        assert (Wp[~keep] == 0).all(), f"ratio={r}: pruned weights are not exactly zero"
        if not updates:
            assert np.array_equal(Wp[keep], np.asarray(W)[keep]), f"ratio={r}: kept weights were changed"
        if exact_count:
            k = n_pruned(r, n)
            assert (~keep).sum() == k, f"ratio={r}: pruned {(~keep).sum()} of {n}, not {k}"
        Wp2, _ = prune(W, H, r, jax.random.PRNGKey(1))
        assert np.array_equal(Wp, np.asarray(Wp2)), f"ratio={r}: not deterministic for a fixed key"
    # ties: an all-equal tensor must be pruned at random positions, not in index order
    Wt = jnp.ones_like(W)
    Ht = jnp.eye(W.shape[1])
    pos = []
    masks = set()
    for s in range(8):
        _, keep = prune(Wt, Ht, 0.25, jax.random.PRNGKey(100 + s))
        keep = np.asarray(keep, bool)
        masks.add(keep.tobytes())
        pos.append(np.nonzero(~keep.ravel())[0].mean() / (n - 1))
    assert len(masks) > 1, "ties are broken the same way for every key (index order?)"
    assert abs(np.mean(pos) - 0.5) < 0.15, f"pruned tied weights sit at mean relative index {np.mean(pos):.2f}"


def check_quantizer(quant, bits=(2, 3, 4, 8), group: int | None = None) -> None:
    """A quantizer keeps a given sparsity mask exactly, puts each group (``group`` consecutive inputs, or a row)
    on at most 2^b levels, is deterministic by key, and its error falls as bits grow."""
    W, _ = _inputs(1)
    keep = jax.random.uniform(jax.random.PRNGKey(7), W.shape) > 0.4
    Wm = W * keep
    errs = []
    for b in bits:
        Q = np.asarray(quant(Wm, b, jax.random.PRNGKey(2), keep))
        assert (Q[~np.asarray(keep)] == 0).all(), f"bits={b}: the sparsity mask was not kept"
        g = group or W.shape[1]
        blocks = Q.reshape(W.shape[0], W.shape[1] // g, g)
        for row in blocks.reshape(-1, g):
            assert len(np.unique(row)) <= 2**b, f"bits={b}: a group holds {len(np.unique(row))} levels"
        assert np.array_equal(Q, np.asarray(quant(Wm, b, jax.random.PRNGKey(2), keep))), "not deterministic"
        errs.append(float(((Q - np.asarray(Wm)) ** 2).sum()))
    assert errs[-1] < errs[0], f"error does not fall with bits: {errs}"
