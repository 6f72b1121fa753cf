"""Pruning and quantization of one weight matrix as pure JAX functions (float64, jit/vmap friendly).

Conventions: W is (out_features, in_features); H = X Xᵀ is the (in, in) Gram matrix of the calibration inputs;
``keep`` is a boolean mask, True where a weight is kept. Settings that change from run to run (pruning ratio,
bit width) are traced values, so one compiled function serves a whole sweep; settings that change the code path
(criterion, structure, group size) are static Python values. Ties in every ranking are broken at random with an
explicit key (index order would give spurious trends); ``key`` may instead be an array of tie-break priorities
(uniform in [0, 1), one per weight, as the kernel contract of :mod:`pih.registry` allows): ties are then ranked
by it, lexicographically after the score, exactly as the torch bridge ranks them with its own draws, and
stochastic rounding uses it as its noise. Counts are :func:`pih.methods.n_pruned`'s (``int(ratio · n)``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

if not jax.config.jax_enable_x64:  # the package's __init__ turns it on before importing its modules
    raise ImportError("the simulation runs in float64, which importing the package 'sim' turns on; here a module "
                      "of it was loaded without its package (a folder named 'sim' on sys.path, e.g. the script's "
                      "own folder experiments/, shadows the package): run from elsewhere or import sim first")


def is_priorities(key) -> bool:
    """True when ``key`` is an array of tie-break priorities (floating point) rather than a JAX PRNG key."""
    return jnp.issubdtype(getattr(key, "dtype", jnp.uint32), jnp.floating)

# --------------------------------------------------------------------------------------------- rankings


def ranks(score: jax.Array, key: jax.Array, axis: int | None = None) -> jax.Array:
    """Rank of each entry (0 = smallest) along ``axis`` (None: the whole array), ties broken at random (or by
    ``key`` itself when it is an array of priorities of ``score``'s size)."""
    if is_priorities(key):
        u = jnp.reshape(key, score.shape)
    else:
        u = jax.random.uniform(key, score.shape)
    if axis is None:
        flat = score.reshape(-1)
        iota = jnp.arange(flat.size)
        _, _, perm = lax.sort((flat, u.reshape(-1), iota), num_keys=2)
        return jnp.zeros(flat.size, jnp.int64).at[perm].set(iota).reshape(score.shape)
    axis = axis % score.ndim
    s = jnp.moveaxis(score, axis, -1)
    uu = jnp.moveaxis(u, axis, -1)
    iota = lax.broadcasted_iota(jnp.int64, s.shape, s.ndim - 1)
    _, _, perm = lax.sort((s, uu, iota), dimension=s.ndim - 1, num_keys=2)
    r = jnp.zeros(s.shape, jnp.int64)
    lead = jnp.indices(s.shape[:-1])
    idx = tuple(i[..., None] for i in lead) + (perm,)
    r = r.at[idx].set(iota)
    return jnp.moveaxis(r, -1, axis)


def n_pruned(ratio, n: int) -> jax.Array:
    """How many of ``n`` units a ratio removes: ``int(ratio · n)``, :func:`pih.methods.n_pruned` for a traced
    ratio (the product in float64, then floored: ratios are >= 0)."""
    return jnp.floor(jnp.asarray(ratio, jnp.float64) * n).astype(jnp.int64)


def _index_bits(n: int) -> int:
    return max(1, (int(n) - 1).bit_length())


def tiebreak_constants(key) -> jax.Array:
    """Three uint64 constants (two odd multipliers and an offset) of the keyed index permutation."""
    c = jax.random.bits(key, (3,), jnp.uint64)
    return c | jnp.array([1, 1, 0], jnp.uint64)


def priorities(consts, n: int, m: int) -> jax.Array:
    """A keyed bijection of 0..2^m−1 (affine map and xor-shifts mod 2^m) applied to 0..n−1: distinct random-looking
    priorities that break ties (a different key gives a different order; never the index order)."""
    mask = jnp.uint64((1 << m) - 1)
    sh = jnp.uint64(m // 2 + 1)
    x = jnp.arange(n, dtype=jnp.uint64)
    x = (x * consts[0] + consts[2]) & mask
    x = x ^ (x >> sh)
    x = (x * consts[1]) & mask
    x = x ^ (x >> sh)
    return x


def sort_keys(score, key, axis=None, removed=None) -> jax.Array:
    """One uint64 per entry that orders by ``score`` (>= 0), then by a random priority: the float's bit pattern
    with its lowest m bits replaced by a keyed bijection of the index (m = bits to number the entries of a slice).
    Scores equal to a relative 2^-(52−m) count as ties. ``removed`` entries get the smallest keys. Sorting one
    uint64 array is an order of magnitude faster in XLA than a multi-operand float sort."""
    n = score.size if axis is None else score.shape[axis]
    m = _index_bits(n)
    bits = lax.bitcast_convert_type(jnp.abs(score).astype(jnp.float64), jnp.uint64) >> jnp.uint64(m)
    bits = bits + jnp.uint64(1)
    if removed is not None:
        bits = jnp.where(removed, jnp.uint64(0), bits)
    pr = priorities(tiebreak_constants(key), score.size if axis is None else n, m)
    if axis is None:
        pr = pr.reshape(score.shape)
    else:
        shape = [1] * score.ndim
        shape[axis] = n
        pr = pr.reshape(shape)
    return (bits << jnp.uint64(m)) | pr


def keep_lowest_removed(score, ratio, key, axis=None, removed=None) -> jax.Array:
    """Keep mask removing the ``ratio`` fraction with the lowest score (per slice along ``axis``; ``removed``
    entries go first), ties broken at random by ``key`` (or ranked by it, for an array of priorities). Scores must
    be >= 0."""
    n = score.size if axis is None else score.shape[axis]
    k = n_pruned(ratio, n)
    if is_priorities(key):  # exact (score, priority) order, removed entries first: the bridge's ranking
        s = jnp.abs(score) if removed is None else jnp.where(removed, -jnp.inf, jnp.abs(score))
        return ranks(s, key, axis) >= k
    keys = sort_keys(score, key, axis, removed)
    if axis is None:
        srt = jnp.sort(keys.reshape(-1))
        thr = srt[jnp.clip(k, 0, n - 1)]
    else:
        srt = jnp.sort(keys, axis=axis)
        thr = jnp.take(srt, jnp.clip(k, 0, n - 1)[None], axis=axis)
    return jnp.where(k >= n, False, jnp.where(k <= 0, True, keys >= thr))


# --------------------------------------------------------------------------------------------- pruning


def prune_scores(W, H, criterion: str) -> jax.Array:
    """Per-weight saliency: magnitude |W|, Wanda |W_ij|·||X_j|| (``H`` the Gram matrix or its diagonal)."""
    if criterion == "magnitude":
        return jnp.abs(W)
    if criterion == "wanda":
        norm2 = H if H.ndim == 1 else jnp.diag(H)  # ||X_j||² per input column
        return jnp.abs(W) * jnp.sqrt(norm2)[None, :]
    raise ValueError(f"criterion={criterion!r}: no per-weight score (use the OBS path for sparsegpt)")


def prune_unstructured(W, H, ratio, key, criterion: str = "magnitude", per: str = "tensor", keep=None):
    """Zero the ``ratio`` fraction of weights with the lowest score, per tensor or per output row."""
    s = prune_scores(W, H, criterion)
    removed = None if keep is None else ~keep  # already pruned weights count first (and stay pruned)
    k = keep_lowest_removed(s, ratio, key, None if per == "tensor" else 1, removed)
    if keep is not None:
        k = k & keep
    return W * k, k


def prune_nm(W, H, key, n: int, m: int, criterion: str = "magnitude", keep=None):
    """N:M sparsity: in every run of M consecutive input weights of a row keep the N with the highest score."""
    o, i = W.shape
    s = prune_scores(W, H, criterion)
    if keep is not None:
        s = jnp.where(keep, s, -1.0)
    r = ranks(s.reshape(o, i // m, m), key, axis=-1).reshape(o, i)
    k = r >= (m - n)
    if keep is not None:
        k = k & keep
    return W * k, k


def row_scores(W, H, criterion: str, W0=None, lam=None, reference: str = "seen"):  # noqa: D417
    """Degradation of removing each row. magnitude: ||w_r||²; otherwise output error ||w_r X||² = w_r H w_rᵀ.

    reference="phi": the marginal degradation relative to φ, (removal error of the original row) − (error the
    row already carries), as A2's well-designed pruner sees it; needs ``W0``. ``lam`` weights rows (A1's λ_u).
    """
    if criterion == "magnitude":
        quad = lambda D: jnp.sum(D * D, axis=1)
    else:
        quad = lambda D: jnp.sum((D @ H) * D, axis=1)
    if reference == "phi":
        s = quad(W0) - quad(W0 - W)
    else:
        s = quad(W)
    return s if lam is None else s * lam


def prune_rows(W, H, ratio, key, criterion="magnitude", W0=None, lam=None, reference="seen", keep=None):
    """Remove the ``ratio`` fraction of output rows with the lowest removal score."""
    s = row_scores(W, H, criterion, W0, lam, reference)
    if keep is not None:
        s = jnp.where(keep.any(axis=1), s, -jnp.inf)
    kr = ranks(s, key) >= n_pruned(ratio, s.size)  # few rows, scores of any sign: a full ranking
    k = jnp.broadcast_to(kr[:, None], W.shape)
    if keep is not None:
        k = k & keep
    return W * k, k


# --------------------------------------------------------------------------------------------- quantization


def _grouped(W, group):
    """Reshape W (o, i) into (rows, n_groups, g) for one scale per (row, group)."""
    o, i = W.shape
    if group == "tensor":
        return W.reshape(1, 1, o * i)
    if group == "channel":
        return W.reshape(o, 1, i)
    return W.reshape(o, i // group, group)


def _levels(bits, symmetric):
    if symmetric:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1  # signed grid {-2^(b-1) .. 2^(b-1)-1}
    return 0.0, 2.0**bits - 1


def _round(x, rounding: str, key):
    if rounding == "nearest":
        return jnp.round(x)
    if rounding == "stochastic":
        if is_priorities(key):  # explicit uniform noise, one per entry (the bridge's draws)
            return jnp.floor(x + jnp.reshape(key, x.shape))
        return jnp.floor(x + jax.random.uniform(key, x.shape))
    if rounding == "down":  # biased (non-zero-mean) noise, for assumption variants
        return jnp.floor(x)
    raise ValueError(f"rounding={rounding!r}: must be nearest, stochastic or down")


def fake_quant(x, scale, zero, bits, symmetric: bool, rounding: str = "nearest", key=None):
    """Quantize-dequantize ``x`` on the uniform grid with ``scale`` and integer ``zero`` point."""
    lo, hi = _levels(bits, symmetric)
    return quant_levels(x, scale, zero, lo, hi, rounding, key)


def quant_levels(x, scale, zero, lo, hi, rounding: str = "nearest", key=None):
    """Quantize-dequantize ``x`` onto the integer levels lo..hi (offset by ``zero``) times ``scale``.

    ``x / scale`` is a true division, as the bridge's (:func:`_divide`): a reciprocal one ulp off would move the
    ties of the full grid (−amax/s = −2^(b−1) + ½ exactly) to the other level."""
    q = jnp.clip(_round(_divide(x, scale), rounding, key) + zero, lo, hi)
    return (q - zero) * scale


def _divide(x, d):
    """``x / d`` as a true division (as numpy and torch divide): XLA rewrites a division by a broadcast value into
    a multiplication by its reciprocal, one ulp off; a barrier on the broadcast divisor keeps the division."""
    return x / lax.optimization_barrier(jnp.broadcast_to(d, jnp.shape(x)))


class QGrid(NamedTuple):
    """A quantization grid as a per-weight (scale, zero) map with integer levels lo..hi; ``valid`` False where no
    quantizer fitted one (a layer mixed precision left untouched, a rotated quantizer's basis)."""

    scale: jax.Array
    zero: jax.Array
    lo: jax.Array
    hi: jax.Array
    valid: jax.Array

    def snap(self, W, keep=None):
        """``W`` rounded to nearest onto this grid (where valid; pruned entries stay zero)."""
        Q = jnp.where(self.valid, quant_levels(W, self.scale, self.zero, self.lo, self.hi), W)
        return Q if keep is None else Q * keep

    def off_grid(self, W):
        """Entries of ``W`` not on this grid (within 1e-6 of their step, as the bridge's ``Grid.on_grid``)."""
        return self.valid & (jnp.abs(self.snap(W) - W) > 1e-6 * jnp.abs(self.scale))


def make_grid(scale, zero, bits, symmetric: bool, shape, valid=True) -> QGrid:
    lo, hi = _levels(bits, symmetric)
    f = jnp.float64
    return QGrid(jnp.broadcast_to(scale, shape).astype(f), jnp.broadcast_to(zero, shape).astype(f),
                 jnp.asarray(lo, f), jnp.asarray(hi, f), jnp.asarray(valid))


def _params_from_range(G, bits, symmetric, shrink, grid: str = "full"):
    """Scale and zero point per group (last axis) from the group's range, shrunk by ``shrink``.

    grid "odd" (symmetric): s = amax / (2^(b−1) − 1), Q(−x) = −Q(x). grid "full": the GPTQ reference grid (the
    bridge's ``find_params``): s = (xmax − xmin) / (2^b − 1) over the range [min(x, 0), max(x, 0)]; symmetric:
    xmax = max|x|, xmin = −xmax when some x < 0 (else 0), the zero point in the middle (signed levels
    −2^(b−1)..2^(b−1)−1 here)."""
    if symmetric and grid == "odd":
        amax = jnp.max(jnp.abs(G), axis=-1, keepdims=True) * shrink
        scale = amax / (2.0 ** (bits - 1) - 1)
        zero = jnp.zeros_like(scale)
    elif symmetric:
        lo = jnp.minimum(jnp.min(G, axis=-1, keepdims=True), 0.0)
        hi = jnp.maximum(jnp.max(G, axis=-1, keepdims=True), 0.0)
        hi = jnp.maximum(-lo, hi)
        lo = jnp.where(lo < 0, -hi, lo)
        scale = _divide((hi - lo) * shrink, 2.0**bits - 1)
        zero = jnp.zeros_like(scale)
    else:
        lo = jnp.minimum(jnp.min(G, axis=-1, keepdims=True), 0.0) * shrink
        hi = jnp.maximum(jnp.max(G, axis=-1, keepdims=True), 0.0) * shrink
        scale = _divide(hi - lo, 2.0**bits - 1)
        scale = jnp.where(scale > 0, scale, 1.0)
        zero = jnp.round(-lo / scale)
    scale = jnp.where(scale > 0, scale, 1.0)  # an all-zero group: any scale represents it exactly
    return scale, zero


N_SHRINK = 48


def group_params(G, bits, symmetric: bool, scale_mode: str, grid: str = "full"):
    """Scale/zero per group of G (..., g): absmax (the group's largest magnitude or range) or MSE-optimal
    (the shrink of the absmax range, on a grid of N_SHRINK values in (0, 1], that minimises the group's MSE);
    ``grid``: "full" | "odd" (see :func:`_params_from_range`)."""
    if scale_mode == "absmax":
        return _params_from_range(G, bits, symmetric, 1.0, grid)
    if scale_mode != "mse":
        raise ValueError(f"scale={scale_mode!r}: must be absmax or mse")

    def body(t, best):
        bs, bz, be = best
        shrink = 1.0 - t / N_SHRINK * 0.95
        s, z = _params_from_range(G, bits, symmetric, shrink, grid)
        e = jnp.sum((fake_quant(G, s, z, bits, symmetric) - G) ** 2, axis=-1, keepdims=True)
        better = e < be
        return jnp.where(better, s, bs), jnp.where(better, z, bz), jnp.where(better, e, be)

    s0, z0 = _params_from_range(G, bits, symmetric, 1.0, grid)
    e0 = jnp.sum((fake_quant(G, s0, z0, bits, symmetric) - G) ** 2, axis=-1, keepdims=True)
    s, z, _ = lax.fori_loop(1, N_SHRINK, body, (s0, z0, e0))
    return s, z


def quantize_rtn(W, bits, key, group="channel", symmetric=True, scale_mode="absmax", rounding="nearest",
                 keep=None, grid: str = "full", with_grid: bool = False):
    """Round-to-nearest (or stochastic) quantization with one scale per group; keeps ``keep``'s zeros exactly.
    ``with_grid``: also return the :class:`QGrid`."""
    G = _grouped(W, group)
    s, z = group_params(G, bits, symmetric, scale_mode, grid)
    noise = _grouped(key, group) if is_priorities(key) else key
    Q = fake_quant(G, s, z, bits, symmetric, rounding, noise).reshape(W.shape)
    Q = Q if keep is None else Q * keep
    if not with_grid:
        return Q
    shape = G.shape
    return Q, make_grid(jnp.broadcast_to(s, shape).reshape(W.shape), jnp.broadcast_to(z, shape).reshape(W.shape),
                        bits, symmetric, W.shape)


# --------------------------------------------------------------------------------------------- OBS family


def inverse_hessian_factor(H, percdamp: float = 0.01):
    """Upper Cholesky factor U of (H + percdamp·mean(diag H)·I)⁻¹ (so H⁻¹ = UᵀU), as SparseGPT and GPTQ use it."""
    i = H.shape[0]
    d = jnp.diag(H)
    H = H + jnp.diag(jnp.where(d == 0, 1.0, 0.0))  # inputs that never fire
    H = H + percdamp * jnp.mean(jnp.diag(H)) * jnp.eye(i)
    Hinv = jnp.linalg.inv(H)
    Hinv = 0.5 * (Hinv + Hinv.T)
    return jnp.linalg.cholesky(Hinv).T


def obs_sweep(W, H, key, ratio=0.0, bits=8, *, prune: str | None = None, nm=None, quant: dict | None = None,
              keep=None, blocksize: int = 128, percdamp: float = 0.01, act_order: bool = False,
              with_grid: bool = False):
    """Column-by-column OBS reconstruction (SparseGPT / GPTQ / SparseGPT's joint mode).

    Columns are processed left to right; each column is replaced by its pruned and/or quantized value and the
    error, scaled by the inverse-Hessian factor, is pushed into the columns to the right. prune: None, or
    "unstructured" (in each block of ``blocksize`` columns remove the ``ratio`` fraction with the lowest
    w²/[H⁻¹]_jj², as SparseGPT) or "nm" (N:M with ``nm``). quant: None, or dict(group, symmetric, scale,
    rounding, grid): quantize every kept weight (GPTQ). Grids: per tensor or channel fitted once, at the start;
    a group's when its first column is reached, on W as of the start of its block of ``blocksize`` columns (the
    lazy block of the reference code) and on the kept weights only. ``keep``: an existing mask kept exactly
    (pruned weights stay zero). ``act_order``: GPTQ's column order by decreasing diag(H) (groups consecutive in
    that order). Returns (W', keep), and the :class:`QGrid` with ``with_grid``.
    """
    if act_order:
        if prune is not None or quant is None:
            raise ValueError("act_order is GPTQ's option: quantization without pruning")
        perm = jnp.argsort(-jnp.diag(H))
        inv = jnp.argsort(perm)
        pk = key[:, perm] if is_priorities(key) else key
        res = obs_sweep(W[:, perm], H[perm][:, perm], pk, ratio, bits, quant=quant,
                        keep=None if keep is None else keep[:, perm], blocksize=blocksize, percdamp=percdamp,
                        with_grid=with_grid)
        out = (res[0][:, inv], res[1][:, inv])
        if with_grid:
            g = res[2]
            out += (g._replace(scale=g.scale[:, inv], zero=g.zero[:, inv]),)
        return out
    o, i = W.shape
    B = min(blocksize, i)
    if i % B:
        raise ValueError(f"blocksize={blocksize}: must divide in_features={i}")
    U = inverse_hessian_factor(H, percdamp)
    du = jnp.diag(U)
    keep = jnp.ones(W.shape, bool) if keep is None else keep
    W = W * keep
    prio = is_priorities(key)
    kprune, kround = (key, key) if prio else jax.random.split(key)
    if quant is not None:
        group = quant["group"]
        qgrid = quant.get("grid", "full")
        g = i if group in ("channel", "tensor") else int(group)
        if group == "tensor":
            s_t, z_t = group_params(W.reshape(1, -1), bits, quant["symmetric"], quant["scale"], qgrid)
            s0 = jnp.full((o, i // g), s_t[0, 0])
            z0 = jnp.full((o, i // g), z_t[0, 0])
        else:
            s0 = jnp.ones((o, i // g))
            z0 = jnp.zeros((o, i // g))

    def block(bi, st):
        W, keep, s, z = st
        j0 = bi * B
        if prune is not None:
            Wb = lax.dynamic_slice(W, (0, j0), (o, B))
            kb = lax.dynamic_slice(keep, (0, j0), (o, B))
            sc = Wb**2 / lax.dynamic_slice(du, (j0,), (B,))[None, :] ** 2
            kk = lax.dynamic_slice(kprune, (0, j0), (o, B)) if prio else jax.random.fold_in(kprune, bi)
            if prune == "nm":
                n, m = nm
                r = ranks(jnp.where(kb, sc, -1.0).reshape(o, B // m, m), kk, axis=-1).reshape(o, B)
                newk = r >= (m - n)
            else:
                newk = keep_lowest_removed(sc, ratio, kk, removed=~kb)
            keep = lax.dynamic_update_slice(keep, newk & kb, (0, j0))
        W0b = W  # W as of this block's start: the grids of the groups that start in it are fitted on it

        def col(j, st):
            W, keep, s, z = st
            w = W[:, j]
            kj = keep[:, j]
            if quant is not None:
                gi = j // g
                if group != "tensor":
                    def refit(args):
                        s, z = args
                        Gm = lax.dynamic_slice(W0b * keep, (0, gi * g), (o, g))
                        sn, zn = group_params(Gm, bits, quant["symmetric"], quant["scale"], qgrid)
                        return s.at[:, gi].set(sn[:, 0]), z.at[:, gi].set(zn[:, 0])

                    s, z = lax.cond(j % g == 0, refit, lambda a: a, (s, z))
                kr = lax.dynamic_index_in_dim(kround, j, axis=1, keepdims=False) if prio else \
                    jax.random.fold_in(kround, j)
                q = fake_quant(w, s[:, gi], z[:, gi], bits, quant["symmetric"], quant["rounding"], kr) * kj
            else:
                q = w * kj
            err = (w - q) / U[j, j]
            W = W - jnp.outer(err, U[j])
            W = W.at[:, j].set(q)
            return W, keep, s, z

        return lax.fori_loop(j0, j0 + B, col, (W, keep, s, z))

    if quant is None:
        s0 = z0 = jnp.zeros((1, 1))
    W, keep, s, z = lax.fori_loop(0, i // B, block, (W, keep, s0, z0))
    if not with_grid:
        return W * keep, keep
    if quant is None:
        raise ValueError("with_grid needs a quantizer")
    cols = jnp.arange(i) // g
    return W * keep, keep, make_grid(s[:, cols], z[:, cols], bits, quant["symmetric"], W.shape)


# --------------------------------------------------------------------------------------------- rotation


def hadamard(n: int, seed: int = 0) -> jax.Array:
    """Orthonormal n×n rotation: Sylvester Hadamard/√n when n is a power of two, else a seeded random
    orthogonal matrix (QR of a Gaussian), which spreads outliers the same way."""
    if n & (n - 1) == 0:
        h = jnp.ones((1, 1))
        while h.shape[0] < n:
            h = jnp.block([[h, h], [h, -h]])
        return h / jnp.sqrt(n)
    q, r = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(seed), (n, n)))
    return q * jnp.sign(jnp.diag(r))[None, :]
