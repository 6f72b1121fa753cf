"""The simulation's kernels against the core's contract (pih.registry): one per built-in method, traced by jit and
vmap, counts int(ratio · n) per comparison group, explicit tie-break priorities ranked like the bridge ranks
its draws, the full (GPTQ reference) and odd grids, GPTQ's group grids at the lazy block's start, the off-grid
policies, act_order, and a new pruner that needs nothing but its spec entry and one kernel."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_testkit import pair

import sim  # noqa: F401  (float64, kernels registered)
from pih import Joint, MixedPrecision, PihError, Prune, Quantize, registry
from pih.methods import n_pruned
from pih.registry import KernelState, Method, Stats
from sim import mechanisms as mech
from sim import pipeline as pl
from sim.kernels import SimOptions, initial_state
from sim.sweep import ModelSpec, Pairing, run_grid
from sim.tensors import make_model

K = jax.random.PRNGKey


def _layer(seed=0, shape=(16, 32), ties=False):
    g = np.random.default_rng(seed)
    W = g.standard_normal(shape)
    if ties:
        W = np.round(W * 2) / 2
    X = g.standard_normal((shape[1], 64)) * g.lognormal(0, 1, (shape[1], 1))
    return jnp.asarray(W), jnp.asarray(X @ X.T)


def _stats(H):
    return Stats(H=H, norm2=jnp.diag(H))


SPECS = [Prune(0.5), Prune(0.5, "wanda"), Prune(0.5, "sparsegpt"), Prune(0.5, structure="2:4"),
         Prune(0.5, "wanda", "2:4"), Prune(0.5, "sparsegpt", "2:4"), Prune(0.5, "loss", "row"),
         Prune(0.5, structure="row"), Quantize(3), Quantize(3, 8, False, "mse"), Quantize(3, update="gptq"),
         Quantize(3, 8, update="gptq", rounding="stochastic"), MixedPrecision((3,))]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_every_builtin_method_has_a_kernel_that_jit_and_vmap_trace(spec):
    """The contract call (six positional arguments) under jit and under vmap over layers: a KernelState in and
    out, the mask kept, deterministic by key."""
    stage, setting = pl.stage_from_spec(spec)
    kernel = registry.kernel_for(stage, "sim")
    W, H = _layer(1)
    f = jax.jit(lambda W, H, st, k, s: kernel(stage, W, _stats(H), st, k, s))
    prior = jax.random.uniform(K(3), W.shape) < 0.3  # an earlier stage's mask
    st0 = initial_state(W.shape, "keep").replace(pruned=prior)
    Wn, st1 = f(W, H, st0, K(0), jnp.float64(setting if not isinstance(setting, tuple) else setting[0]))
    assert isinstance(st1, KernelState)
    assert (np.asarray(st1.pruned) >= np.asarray(prior)).all() and (np.asarray(Wn)[np.asarray(st1.pruned)] == 0).all()
    again, _ = f(W, H, st0, K(0), jnp.float64(setting if not isinstance(setting, tuple) else setting[0]))
    assert np.array_equal(np.asarray(Wn), np.asarray(again))
    Ws, Hs = jnp.stack([W, 2 * W]), jnp.stack([H, H])
    sts = initial_state(Ws.shape, "keep")
    Wv, stv = jax.vmap(lambda w, h, s, k: kernel(stage, w, _stats(h), s, k, 0.5 if spec.kind == "prune" else 3.0))(
        Ws, Hs, sts, jax.random.split(K(0), 2))
    assert Wv.shape == Ws.shape and stv.pruned.shape == Ws.shape


def test_joint_and_block_kernels_are_registered():
    W, H = _layer(2)
    j = Joint(Prune(0.5, "sparsegpt"), Quantize(3))
    stage, setting = pl.stage_from_spec(j)
    Wn, st = registry.kernel_for(stage, "sim")(stage, W, _stats(H), initial_state(W.shape, "keep"), K(0),
                                               jnp.asarray(setting, jnp.float64))
    assert int(np.asarray(st.pruned).sum()) == W.size // 2 and st.grid is not None
    assert registry.scope_of(Prune(0.25, "loss", "block")) == "model"
    m = make_model(0, n_layers=4, shape=(8, 16), n_samples=24, layer_scales=True)
    out = pl.run_pipeline(m, (Prune(0.5, "loss", "block"),), None, K(0))
    assert (~np.asarray(out.keep)).all(axis=(1, 2)).sum() == 2


@settings(max_examples=60)
@given(ratio=st.floats(0.0, 0.999), n=st.integers(1, 5000))
def test_counts_are_the_cores_n_pruned(ratio, n):
    assert int(mech.n_pruned(ratio, n)) == n_pruned(ratio, n)


@pytest.mark.parametrize("ratio", [0.3, 0.45, 0.6, 0.9])
def test_pruned_counts_per_comparison_group(ratio):
    """int(ratio · n) of each group: the whole tensor (magnitude), each row (Wanda), each block of blocksize
    columns x rows (SparseGPT); also on top of an earlier mask, which counts towards the ratio."""
    W, H = _layer(4, (12, 40))
    o, i = W.shape
    st = initial_state(W.shape, "keep")
    _, s = registry.kernel_for(Prune(0, "magnitude"), "sim")(Prune(0), W, _stats(H), st, K(0), ratio)
    assert int(np.asarray(s.pruned).sum()) == n_pruned(ratio, o * i)
    _, s = registry.kernel_for(Prune(0, "wanda"), "sim")(Prune(0, "wanda"), W, _stats(H), st, K(0), ratio)
    assert (np.asarray(s.pruned).sum(1) == n_pruned(ratio, i)).all()
    sg = Prune(0, "sparsegpt")
    _, s = registry.kernel_for(sg, "sim")(sg, W, _stats(H), st, K(0), ratio, options=SimOptions(blocksize=8))
    blocks = np.asarray(s.pruned).reshape(o, i // 8, 8).sum(axis=(0, 2))
    assert (blocks == n_pruned(ratio, o * 8)).all()
    earlier = st.replace(pruned=jnp.zeros(W.shape, bool).at[:, :5].set(True))
    _, s = registry.kernel_for(Prune(0, "magnitude"), "sim")(Prune(0), W, _stats(H), earlier, K(0), ratio)
    assert int(np.asarray(s.pruned).sum()) == max(n_pruned(ratio, o * i), 5 * o) and np.asarray(s.pruned)[:, :5].all()


def _lexsort_smallest(score, prio, k):
    """Reference: the k entries smallest in (score, priority), as the bridge's smallest_mask orders them."""
    order = np.lexsort((prio.ravel(), score.ravel()))
    out = np.zeros(score.size, bool)
    out[order[:k]] = True
    return out.reshape(score.shape)


def test_explicit_priorities_rank_ties_like_the_bridge():
    """With an array of priorities as the key, ties are ranked by it (lexicographically after the score), for
    magnitude (per tensor), Wanda (per row) and SparseGPT's first block; a different array, other choices."""
    W, H = _layer(5, ties=True)
    prio = jnp.asarray(np.random.default_rng(9).random(W.shape))
    st = initial_state(W.shape, "keep")
    _, s = registry.kernel_for(Prune(0), "sim")(Prune(0), W, _stats(H), st, prio, 0.5)
    ref = _lexsort_smallest(np.abs(np.asarray(W)), np.asarray(prio), n_pruned(0.5, W.size))
    assert np.array_equal(np.asarray(s.pruned), ref)
    _, s = registry.kernel_for(Prune(0, "wanda"), "sim")(Prune(0, "wanda"), W, _stats(H), st, prio, 0.5)
    score = np.abs(np.asarray(W)) * np.sqrt(np.diag(np.asarray(H)))[None, :]
    for r in range(W.shape[0]):
        assert np.array_equal(np.asarray(s.pruned)[r], _lexsort_smallest(score[r], np.asarray(prio)[r], 16))
    sg = Prune(0, "sparsegpt")
    _, s = registry.kernel_for(sg, "sim")(sg, W, _stats(H), st, prio, 0.5, options=SimOptions(blocksize=8))
    d = np.diag(np.asarray(mech.inverse_hessian_factor(H)))
    first = np.asarray(W)[:, :8] ** 2 / d[None, :8] ** 2
    assert np.array_equal(np.asarray(s.pruned)[:, :8], _lexsort_smallest(first, np.asarray(prio)[:, :8], 64))
    _, s2 = registry.kernel_for(Prune(0), "sim")(Prune(0), W, _stats(H), st, 1 - prio, 0.5)
    assert not np.array_equal(np.asarray(s2.pruned), ref)


def test_keyed_tie_breaking_is_bitwise_what_it_was():
    """The PRNG-key path is unchanged by the priorities path: masks of every ranking on a tied tensor, pinned (a
    digest computed before explicit priorities existed)."""
    g = np.random.default_rng(0)
    W = jnp.asarray(np.round(g.standard_normal((16, 32)) * 2) / 2)
    X = g.standard_normal((32, 64))
    H = jnp.asarray(X @ X.T)
    k = K(7)
    outs = [mech.prune_unstructured(W, H, 0.5, k, "magnitude", per)[1] for per in ("tensor", "row")]
    outs.append(mech.prune_unstructured(W, H, 0.25, k, "wanda", "row")[1])
    outs.append(mech.prune_nm(W, H, k, 2, 4)[1])
    outs.append(mech.prune_rows(W, H, 0.5, k, "loss")[1])
    outs.append(mech.obs_sweep(W, H, k, 0.5, prune="unstructured", blocksize=8)[1])
    outs.append(mech.obs_sweep(W, H, k, 0.5, prune="nm", nm=(2, 4), blocksize=8)[1])
    digest = hashlib.sha256(b"".join(np.asarray(o, bool).tobytes() for o in outs)).hexdigest()[:16]
    assert digest == "fef6b70307fe8283"


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_full_grid_is_the_bridges_and_odd_grid_is_odd(sym, bits):
    """grid "full": the GPTQ reference grid (pih/bridge/quant.py find_params, in float64): symmetric, the range
    [−amax, amax] (or [0, max] for a row without negative weights) in 2^b − 1 steps, −amax on the grid and the top
    level clamped; asymmetric, [min(x, 0), max(x, 0)] with an integer zero point. grid "odd": s = amax/(2^(b−1) − 1)
    and Q(−x) = −Q(x)."""
    g = np.random.default_rng(bits)
    W = g.standard_normal((12, 16))
    W[3] = np.abs(W[3])  # non-negative only
    Q = np.asarray(mech.quantize_rtn(jnp.asarray(W), bits, K(0), "channel", sym, "absmax", grid="full"))
    lo, hi, maxq = np.minimum(W.min(1, keepdims=True), 0), np.maximum(W.max(1, keepdims=True), 0), 2**bits - 1
    if sym:
        amax = np.abs(W).max(1, keepdims=True)
        step = np.where(lo < 0, 2 * amax, amax) / maxq
        levels = np.clip(np.round(W / step), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    else:
        step = (hi - lo) / maxq
        zero = np.round(-lo / step)
        levels = np.clip(np.round(W / step) + zero, 0, maxq) - zero
    np.testing.assert_array_equal(Q, levels * step)
    if sym:
        odd = np.asarray(mech.quantize_rtn(jnp.asarray(W), bits, K(0), "channel", True, "absmax", grid="odd"))
        neg = np.asarray(mech.quantize_rtn(jnp.asarray(-W), bits, K(0), "channel", True, "absmax", grid="odd"))
        np.testing.assert_array_equal(odd, -neg)
        step = np.abs(W).max(1, keepdims=True) / (2 ** (bits - 1) - 1)
        np.testing.assert_allclose(odd / step, np.round(odd / step), atol=1e-9)


def test_gptq_groups_fitted_at_the_lazy_block_start_match_the_bridge():
    """GPTQ with groups smaller than the lazy block and a kept mask: the simulation's kernel and the bridge's gptq
    (float32) on the same (W, H, mask) give the same quantized weights to float32 rounding (the convention of
    fitting a group on the in-block updated W differs in about a quarter of the second groups' weights)."""
    torch = pytest.importorskip("torch")
    from pih.bridge.quant import gptq

    g = np.random.default_rng(0)
    X = g.standard_normal((300, 1)) * 3.0 + g.standard_normal((300, 32)) * (0.5 + g.random(32))
    W, H = g.standard_normal((16, 32)).astype(np.float32), (X.T @ X).astype(np.float32)
    mask = g.random(W.shape) < 0.5  # True = pruned
    ours = np.asarray(mech.obs_sweep(jnp.asarray(W, jnp.float64) * ~mask, jnp.asarray(H, jnp.float64), K(0), 0.0, 2,
                                     quant={"group": 8, "symmetric": False, "scale": "absmax", "rounding": "nearest"},
                                     keep=jnp.asarray(~mask), blocksize=16)[0])
    theirs, _ = gptq(torch.from_numpy(W * ~mask), torch.from_numpy(H), 2, group=8, symmetric=False, blocksize=16,
                     mask=torch.from_numpy(mask))
    differ = np.abs(ours - theirs.double().numpy()) > 1e-4 * np.abs(W).max()
    assert differ.mean() < 0.01


def test_offgrid_policies_after_a_quantizer():
    """SparseGPT after RTN: "keep" leaves its update off the grid (and counts it), "requantize" snaps every kept
    weight back onto the same grid, "forbid" refuses the pipeline; the mask is exact in every case."""
    m = make_model(3, n_layers=1, shape=(16, 32), n_samples=64)
    pipe, values = (Quantize(4), Prune(0.5, "sparsegpt")), (4.0, 0.5)
    keys = jnp.stack([K(1), K(2)])
    kept = pl.run_pipeline(m, pipe, values, keys, options=SimOptions(offgrid="keep"))
    req = pl.run_pipeline(m, pipe, values, keys, options=SimOptions(offgrid="requantize"))
    assert int(kept.offgrid_moved) > 0 and int(kept.offgrid_kept) == m.W.size // 2
    assert np.array_equal(np.asarray(kept.keep), np.asarray(req.keep))
    W = np.asarray(req.W)[0]
    k = np.asarray(req.keep)[0]
    step = np.abs(np.asarray(m.W)[0]).max(1, keepdims=True) * 2 / 15  # the 4-bit symmetric full grid of each row
    on = np.abs(W / step - np.round(W / step)) < 1e-6
    assert on[k].all() and (W[~k] == 0).all()
    assert not np.abs(np.asarray(kept.W)[0] / step - np.round(np.asarray(kept.W)[0] / step))[k].max() < 1e-6
    with pytest.raises(PihError, match="offgrid='forbid'"):
        pl.run_pipeline(m, pipe, values, keys, options=SimOptions(offgrid="forbid"))
    pl.run_pipeline(m, pipe[::-1], values[::-1], keys, options=SimOptions(offgrid="forbid"))  # P first: fine


def test_act_order_is_gptq_on_the_columns_by_decreasing_activation():
    W, H = _layer(6)
    q = {"group": 8, "symmetric": True, "scale": "absmax", "rounding": "nearest", "grid": "full"}
    perm = np.argsort(-np.diag(np.asarray(H)), kind="stable")
    a = mech.obs_sweep(W, H, K(0), 0.0, 3, quant=q, blocksize=16, act_order=True)[0]
    b = mech.obs_sweep(W[:, perm], H[perm][:, perm], K(0), 0.0, 3, quant=q, blocksize=16)[0]
    np.testing.assert_allclose(np.asarray(a)[:, perm], np.asarray(b), atol=1e-12)
    assert not np.allclose(np.asarray(a), np.asarray(mech.obs_sweep(W, H, K(0), 0.0, 3, quant=q, blocksize=16)[0]))


def test_a_new_pruner_needs_a_spec_entry_and_one_kernel():
    """A pruner from a user's module: ``register_method`` and one ``register_kernel(NAME, "sim", fn)``; the
    pipelines, the pairs and the grids of the simulation use it unchanged."""

    def random_kernel(spec, W, stats, state, key, setting, **_):
        score = jax.random.uniform(jax.random.fold_in(key, 1), W.shape)
        keep = mech.keep_lowest_removed(score, setting, key, removed=state.pruned)
        return W * keep, state.replace(pruned=~keep)

    with registry.scoped():
        registry.register_method(Method("random-test", "prune", "none", ("unstructured",)))
        registry.register_kernel("random-test", "sim", random_kernel)
        g = run_grid(Pairing("random x rtn", Prune(0.5, "random-test"), Quantize(4)), [0.25, 0.5], [2, 4], [0],
                     ModelSpec(shape=(8, 16), n_samples=24), progress=False)
        assert np.isfinite(g.A).all() and (g.M_P[0, 1] < g.M_P[0, 0] < 0)
    with pytest.raises(PihError, match="criterion="):
        Prune(0.5, "random-test")


def test_options_are_validated_and_named_as_the_bridge_names_them():
    assert SimOptions.of({"offgrid": "requantize", "percdamp": 0.05}).percdamp == 0.05
    for bad in ({"damp": 0.1}, {"after_quant": "keep"}, {"per": "column"}, {"blocksize": 0}, {"percdamp": 1.5},
                {"rotation_scope": "layer"}, {"act_order": "yes"}):
        with pytest.raises(PihError):
            SimOptions.of(bad)
    with pytest.raises(PihError, match="offgrid='requantize'"):  # no grid in the weights' basis to snap onto
        pl.run_pipeline(make_model(0), (Quantize(4, rotation="hadamard"), Prune(0.5, "sparsegpt")), None, K(0),
                        options=SimOptions(offgrid="requantize", rotation_scope="quantizer"))


def test_a_non_finite_metric_is_stored_as_a_failure(tmp_path):
    """An overflowing performance map stores -inf with the record's failed reason (never a finite stand-in), and
    the analysis leaves those points out."""
    from pih import Store
    from sim.assumptions import AssumptionSet

    def overflow(e, lam, dense):
        with np.errstate(over="ignore"):
            return -float(np.exp(1e5 * np.sum(lam * e) / np.sum(lam * dense)))

    a = AssumptionSet("overflow-test", "M = -exp(1e5 error)", performance=overflow)
    store = Store(tmp_path / "s")
    g = run_grid(Pairing("m x rtn", Prune(0.5), Quantize(4)), [0.25, 0.5], [2, 8], [0],
                 ModelSpec(shape=(8, 16), n_samples=24), a, store, progress=False)
    failed = [r for r in store.records() if not r.ok]
    assert failed and all(r.value == -np.inf and "non-finite" in r.failed for r in failed)
    assert g.analysis.n_failed == len(failed) and np.isnan(g.A).any()


def test_importing_sim_records_and_announces_its_jax_settings():
    """float64 is process-wide (sim/__init__.py says why): recorded in sim.JAX_SETTINGS, announced with a
    PihWarning when JAX had already computed in float32, and every result of the simulation is float64."""
    code = ("import warnings, jax.numpy as jnp\n"
            "x = jnp.ones(2)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import sim\n"
            "print(x.dtype, jnp.ones(2).dtype, sim.JAX_SETTINGS['jax_enable_x64'], [str(m.message)[:40] for m in w])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "float32 float64 {'before': False, 'after': True}" in out and "importing sim turned on jax_enable_x64" in out
    quiet = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", "import sim, jax.numpy as j; "
                            "print(j.ones(1).dtype)"], capture_output=True, text=True, check=True).stdout
    assert quiet.strip() == "float64"  # imported first: nothing computed in float32 before, nothing to announce
    m = make_model(0, shape=(8, 16), n_samples=24)
    out = pl.run_pipeline(m, (Prune(0.5), Quantize(4)), None, K(0))
    assert out.W.dtype == jnp.float64 and out.output_err.dtype == jnp.float64


@pytest.mark.parametrize("prune", [Prune(0.5), Prune(0.5, "sparsegpt")], ids=["magnitude", "sparsegpt"])
def test_pair_errors_equal_the_pipelines_measured_one_by_one(prune):
    """Every error run_pair reports (P alone, Q alone, both orders, Q first's disjoint reconstruction) equals the
    one computed from the pipelines' own weights; Q first's disjoint reconstruction is Q first itself exactly when
    the pruner does not move the weights it keeps (magnitude), not for SparseGPT, whose OBS update moves them
    (twin killed: any shortcut that reads one for the other)."""
    m = make_model(0, 2, (16, 32), 48, "student_t", 4.0, 0, 1.0, 2, False)
    quant = Quantize(3, grid="odd")
    r = pair(m, prune, quant, 0.5, 3.0, seed=1)
    key = jax.random.split(jax.random.PRNGKey(1))
    W0, X = np.asarray(m.W), np.asarray(m.X)

    def run(ids):
        specs = tuple(pl.canonical((prune, quant)[i]) for i in ids)
        return pl.run_pipeline(m, specs, tuple(jnp.float64((0.5, 3.0)[i]) for i in ids),
                               jnp.stack([key[i] for i in ids]), method_ids=ids)

    P_, Q_, PF, QF = run((0,)), run((1,)), run((0, 1)), run((1, 0))

    def out_err(W):
        D = W0 - np.asarray(W)
        return np.sum((D @ X) ** 2, axis=2)

    qf_dis = np.where(np.asarray(QF.keep), np.asarray(Q_.Wact), 0.0)
    for name, W in (("p", P_.Wact), ("q", Q_.Wact), ("pf", PF.Wact), ("qf", QF.Wact), ("qf_disjoint", qf_dis)):
        np.testing.assert_allclose(r[f"{name}_output"], out_err(W), rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(r[f"{name}_weight"], np.sum((W0 - np.asarray(W)) ** 2, axis=2), rtol=1e-10)
    moved = not np.allclose(qf_dis, np.asarray(QF.Wact))
    assert moved == (prune.criterion == "sparsegpt")
