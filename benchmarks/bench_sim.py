"""Benchmark (not a test): the JAX sweep against two numpy baselines computing the same records.

Magnitude pruning (per tensor, random tie-breaking) x round-to-nearest per-channel absmax quantization on
512x512 layers (Student-t(4) weights, 64 heavy-tailed calibration samples): per (p, b, seed) point, P alone,
Q alone, both orders, and the disjoint reconstructions (for Δ), each measured as per-row output and weight
errors, then M, Δ and the order advantage. All three run in the same process, and the records of both numpy
baselines are checked against the JAX ones before any ratio is printed:

- the naive loop (``numpy_sweep``): every point recomputes what depends on one setting or none (W @ X, two full
  lexsorts of the layer, the same GEMMs again);
- the fair vectorised numpy (``numpy_fair_sweep``), what a competent numpy user writes: per seed the dense output
  once and each ranking once (one argsort of the simulation's packed sort keys for |W|, one per bit width for
  |Q(W)|, every ratio's mask read off the same order), the quantized matrices per bit width, and the output
  errors of all the points of a bit width as one batched GEMM; records equal to the JAX sweep's to ~1e-12.

    .venv/bin/python benchmarks/bench_sim.py [--points 10000] [--numpy-seeds 2] [--fair-seeds 8] [--shape 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _devices_from_argv(argv) -> int:
    """--devices N (default: the CPU cores): the JAX sweep runs one seed per CPU device."""
    for i, a in enumerate(argv):
        if a == "--devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--devices="):
            return int(a.split("=", 1)[1])
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":  # huge pages for XLA's buffers, as the pih command has them (pih.hugepages)
    from pih.hugepages import ensure

    ensure()

if "jax" not in sys.modules:  # must be set before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_devices_from_argv(sys.argv)}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import sim  # noqa: F401, E402  (float64)
from pih import Prune, Quantize, hugepages  # noqa: E402
from pih.methods import n_pruned  # noqa: E402
from sim import assumptions as AS  # noqa: E402
from sim import mechanisms as mech  # noqa: E402
from sim.sweep import ModelSpec, Pairing, run_grid  # noqa: E402

RATIOS = np.round(np.linspace(0.1, 0.8, 8), 4)
BITS = np.arange(2, 9, dtype=float)


# ----------------------------------------------------------------------------------------- numpy baseline


def np_keep(score, key, ratio, removed=None, lexsort=True):
    """Magnitude pruning mask with the simulation's random tie-breaking priorities, per tensor. ``lexsort``: the
    straightforward way (np.lexsort on (priority, |score|)); otherwise the simulation's packed uint64 keys."""
    n = score.size
    m = max(1, (n - 1).bit_length())
    c = np.asarray(mech.tiebreak_constants(key)).astype(np.uint64)
    mask = np.uint64((1 << m) - 1)
    sh = np.uint64(m // 2 + 1)
    x = np.arange(n, dtype=np.uint64)
    x = (x * c[0] + c[2]) & mask
    x ^= x >> sh
    x = (x * c[1]) & mask
    x ^= x >> sh
    k = int(ratio * n)  # pih.methods.n_pruned
    if k <= 0:
        return np.ones(score.shape, bool)
    if k >= n:
        return np.zeros(score.shape, bool)
    if lexsort:
        order = np.lexsort((x, np.abs(score).ravel()))
        keep = np.ones(n, bool)
        keep[order[:k]] = False
        return keep.reshape(score.shape)
    bits = (np.abs(score).astype(np.float64).view(np.uint64) >> np.uint64(m)) + np.uint64(1)
    if removed is not None:
        bits = np.where(removed, np.uint64(0), bits)
    keys = (bits << np.uint64(m)) | x.reshape(score.shape)
    return keys >= np.sort(keys.ravel())[k]


def np_rtn(W, bits):
    amax = np.abs(W).max(axis=1, keepdims=True)
    s = amax / (2.0 ** (bits - 1) - 1)
    s = np.where(s > 0, s, 1.0)
    return np.clip(np.round(W / s), -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) * s


def np_point(W, X, kp, kq, p, b, lexsort=True):
    """Every record value of one (p, b) point, the straightforward way."""
    def errs(Wn):
        D = W - Wn
        return (D * D).sum(1), ((D @ X) ** 2).sum(1)

    dense = ((W @ X) ** 2).sum(1)
    keep_p = np_keep(W, kp, p, lexsort=lexsort)
    Wq = np_rtn(W, b)
    pf = np_rtn(W * keep_p, b) * keep_p
    keep_q = np_keep(Wq, kp, p, lexsort=lexsort)
    qf = Wq * keep_q
    out = {}
    for name, Wn in (("P", W * keep_p), ("Q", Wq), ("pf", pf), ("qf", qf), ("pf_dis", np.where(keep_p, Wq, 0.0)),
                     ("qf_dis", np.where(keep_q, Wq, 0.0))):
        out[name] = -errs(Wn)[1].sum() / dense.sum()
    return out


def numpy_sweep(ms: ModelSpec, seeds, lexsort=True) -> dict:
    res = {}
    for s in seeds:
        m = ms.make(int(s))
        W, X = np.asarray(m.W[0]), np.asarray(m.X[0])
        kp, kq = jax.random.split(jax.random.PRNGKey(int(s)))
        lkp, lkq = jax.random.split(kp, 1)[0], jax.random.split(kq, 1)[0]  # per-layer keys, as run_pipeline
        for bi, b in enumerate(BITS):
            for ri, p in enumerate(RATIOS):
                res[(int(s), bi, ri)] = np_point(W, X, lkp, lkq, float(p), float(b), lexsort)
    return res


def _packed_order(score, key) -> np.ndarray:
    """The simulation's ranking of ``score`` (``sim.mechanisms.sort_keys``: the float's bits above the m lowest,
    then a keyed index priority), as one argsort: position i holds the index of the i-th smallest."""
    n = score.size
    m = max(1, (n - 1).bit_length())
    c = np.asarray(mech.tiebreak_constants(key)).astype(np.uint64)
    mask = np.uint64((1 << m) - 1)
    sh = np.uint64(m // 2 + 1)
    x = np.arange(n, dtype=np.uint64)
    x = (x * c[0] + c[2]) & mask
    x ^= x >> sh
    x = (x * c[1]) & mask
    x ^= x >> sh
    bits = (np.abs(score).astype(np.float64).ravel().view(np.uint64) >> np.uint64(m)) + np.uint64(1)
    return np.argsort((bits << np.uint64(m)) | x)


def _keeps(order: np.ndarray, shape, ratios) -> np.ndarray:
    """Keep masks (len(ratios), *shape) of every ratio from one ranking: the int(p · n) smallest are pruned (the
    count every backend uses, ``pih.methods.n_pruned``)."""
    n = order.size
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    ks = np.array([n_pruned(float(r), n) for r in ratios], np.int64)
    return (rank[None, :] >= ks[:, None]).reshape((len(ks), *shape))


def _rtn_rows(W, bits):
    """np_rtn of a stack of matrices (..., rows, cols) at once."""
    amax = np.abs(W).max(axis=-1, keepdims=True)
    s = amax / (2.0 ** (bits - 1) - 1)
    s = np.where(s > 0, s, 1.0)
    return np.clip(np.round(W / s), -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) * s


def _out_err(D, X):
    """||D_i X||_F^2 for a stack of differences D (k, rows, cols): one GEMM."""
    Y = D.reshape(-1, D.shape[-1]) @ X
    return (Y * Y).reshape(D.shape[0], -1).sum(1)


def numpy_fair_sweep(ms: ModelSpec, seeds) -> dict:
    """The records of :func:`numpy_sweep`, vectorised as a competent numpy user would (see the module doc)."""
    res = {}
    nr = len(RATIOS)
    for s in seeds:
        m = ms.make(int(s))
        W, X = np.asarray(m.W[0]), np.asarray(m.X[0])
        kp, _ = jax.random.split(jax.random.PRNGKey(int(s)))
        lkp = jax.random.split(kp, 1)[0]  # the per-layer key, as run_pipeline
        dense = float(((W @ X) ** 2).sum())
        keep_p = _keeps(_packed_order(W, lkp), W.shape, RATIOS)  # (R, rows, cols)
        Wp = W[None] * keep_p
        e_p = _out_err(W[None] - Wp, X)
        for bi, b in enumerate(BITS):
            Wq = _rtn_rows(W, float(b))
            keep_q = _keeps(_packed_order(Wq, lkp), W.shape, RATIOS)
            pf = _rtn_rows(Wp, float(b)) * keep_p
            qf = Wq[None] * keep_q  # also Q first's disjoint reconstruction: Q's values where kept
            pf_dis = np.where(keep_p, Wq[None], 0.0)
            e = _out_err(np.concatenate([(W - Wq)[None], W[None] - pf, W[None] - qf, W[None] - pf_dis]), X)
            e_q, e_pf, e_qf, e_pfd = e[0], e[1 : 1 + nr], e[1 + nr : 1 + 2 * nr], e[1 + 2 * nr :]
            for ri in range(nr):
                res[(int(s), bi, ri)] = {"P": -e_p[ri] / dense, "Q": -e_q / dense, "pf": -e_pf[ri] / dense,
                                         "qf": -e_qf[ri] / dense, "pf_dis": -e_pfd[ri] / dense,
                                         "qf_dis": -e_qf[ri] / dense}
    return res


def agreement(ref: dict, g) -> tuple[float, tuple | None]:
    """Largest difference between numpy records and the JAX sweep's, relative to the metric's size at the point."""
    worst, where = 0.0, None
    for (s, bi, ri), r in ref.items():
        pairs = (("M_P", r["P"], g.M_P[s, ri]), ("M_Q", r["Q"], g.M_Q[s, bi]), ("M_pf", r["pf"], g.M_pf[s, bi, ri]),
                 ("M_qf", r["qf"], g.M_qf[s, bi, ri]), ("delta_pf", r["pf_dis"] - r["pf"], g.delta_pf[s, bi, ri]),
                 ("delta_qf", r["qf_dis"] - r["qf"], g.delta_qf[s, bi, ri]))
        scale = max(abs(r["P"]), abs(r["Q"]), abs(r["pf"]), abs(r["qf"]))
        for name, a, b in pairs:
            d = abs(a - b) / scale
            if d > worst:
                worst, where = d, (name, s, float(BITS[bi]), float(RATIOS[ri]))
    return worst, where


def flops_per_seed(pa, ms) -> float:
    """FLOPs of the compiled per-seed grid program (XLA's cost analysis of ``sim.sweep.grid_one_seed``). The
    program loops over bit widths (``lax.map``) and XLA counts a loop body once, so one bit width is lowered and
    the count multiplied by their number."""
    import jax.numpy as jnp

    from sim import pipeline as pl
    from sim.sweep import grid_one_seed

    prune, quant, options = pa.under(AS.A1)
    m = ms.make(0)
    lam = jnp.asarray(np.asarray(AS.A1.sensitivity(tuple(m.W.shape[:2]), 0), dtype=float))
    compiled = grid_one_seed.lower(m.W, m.X, jax.random.PRNGKey(0), lam, jnp.asarray(RATIOS, jnp.float64),
                                   jnp.asarray(BITS[:1], jnp.float64), prune=pl.canonical(prune),
                                   quant=pl.canonical(quant), options=options).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) * len(BITS)


def matmul_peak(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of float64 square GEMMs on every JAX device at once (best of ``repeats``): the machine's matmul
    peak as XLA reaches it."""
    import jax.numpy as jnp

    d = jax.local_device_count()
    a = jnp.stack([jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float64) for i in range(d)])
    f = jax.pmap(lambda x: x @ x)  # one GEMM per device, as the sweep runs one seed per device
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return d * 2 * n ** 3 / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000, help="(p, b, seed) points for the JAX sweep")
    ap.add_argument("--numpy-seeds", type=int, default=2, help="seeds for the naive numpy loop (8x7 points each)")
    ap.add_argument("--fair-seeds", type=int, default=8, help="seeds for the fair vectorised numpy (8x7 points each)")
    ap.add_argument("--shape", type=int, default=512, help="layer side")
    ap.add_argument("--samples", type=int, default=64, help="calibration samples")
    ap.add_argument("--devices", type=int, default=None, help="CPU devices for the JAX sweep (default: cores)")
    args = ap.parse_args(argv)
    per_seed = len(RATIOS) * len(BITS)
    n_seeds = max(1, -(-args.points // per_seed))
    ms = ModelSpec(shape=(args.shape, args.shape), n_samples=args.samples, dist="student_t", act_outliers=4)
    pa = Pairing("magnitude x RTN", Prune(0.5), Quantize(4, grid="odd"))  # np_rtn's grid
    print(f"devices: {jax.devices()}; layer {args.shape}x{args.shape}, {args.samples} samples; grid "
          f"{len(RATIOS)} ratios x {len(BITS)} bit widths", file=sys.stderr)

    t0 = time.perf_counter()
    run_grid(pa, RATIOS, BITS, range(10_000, 10_000 + jax.local_device_count()), ms, AS.A1, progress=False)  # compile
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = run_grid(pa, RATIOS, BITS, range(n_seeds), ms, AS.A1, progress=True)
    t_jax = time.perf_counter() - t0
    n_jax = n_seeds * per_seed
    jax_pps = n_jax / t_jax

    ns = min(args.numpy_seeds, n_seeds)
    t0 = time.perf_counter()
    ref = numpy_sweep(ms, range(ns))
    t_np = time.perf_counter() - t0
    np_pps = len(ref) / t_np
    t0 = time.perf_counter()
    ref_keys = numpy_sweep(ms, range(1), lexsort=False)
    np_keys_pps = len(ref_keys) / (time.perf_counter() - t0)

    nf = min(args.fair_seeds, n_seeds)
    t0 = time.perf_counter()
    fair = numpy_fair_sweep(ms, range(nf))
    t_fair = time.perf_counter() - t0
    fair_pps = len(fair) / t_fair

    flops = flops_per_seed(pa, ms) * n_seeds
    peak = matmul_peak()

    worst, where = agreement(ref, g)
    worst_f, where_f = agreement(fair, g)
    ok = worst < 1e-9 and worst_f < 1e-12
    print(f"jax:   {n_jax} points in {t_jax:.1f} s = {jax_pps:.1f} points/s (compile {t_compile:.1f} s, excluded)")
    print(f"jax:   {flops / t_jax / 1e9:.1f} GFLOP/s achieved ({flops / n_seeds / 1e9:.2f} GFLOP per seed, XLA's "
          f"cost analysis) against a float64 matmul peak of {peak / 1e9:.1f} GFLOP/s on the same devices: "
          f"{flops / t_jax / peak:.0%}; huge pages for XLA's buffers: "
          f"{'on' if hugepages.active() else 'off'} (pih.hugepages)")
    print(f"numpy, naive loop: {len(ref)} points in {t_np:.1f} s = {np_pps:.2f} points/s (np.lexsort tie-breaking)")
    print(f"numpy, naive loop with the simulation's packed uint64 sort keys: {np_keys_pps:.2f} points/s")
    print(f"numpy, fair vectorised: {len(fair)} points in {t_fair:.1f} s = {fair_pps:.2f} points/s")
    print(f"records agree: {ok} (naive: max difference {worst:.1e} of the metric's size, at {where}; fair: "
          f"{worst_f:.1e}, at {where_f})")
    print(f"ratio (jax / numpy points/s): {jax_pps / fair_pps:.2f}x against the fair vectorised numpy; "
          f"{jax_pps / np_pps:.1f}x against the naive loop ({jax_pps / np_keys_pps:.1f}x with packed keys); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
