"""Tensor generators and loaders; assumption sets as values."""

from __future__ import annotations

import numpy as np
import pytest

from pih import PihError, Prune, Quantize, registry
from sim import assumptions as AS
from sim import tensors as T
from sim.sweep import ModelSpec, Pairing, run_grid


def test_generators_are_deterministic_and_shaped():
    a = T.make_model(3, n_layers=2, shape=(4, 8), n_samples=5, dist="laplace", outlier_channels=1, act_outliers=1)
    b = T.make_model(3, n_layers=2, shape=(4, 8), n_samples=5, dist="laplace", outlier_channels=1, act_outliers=1)
    c = T.make_model(4, n_layers=2, shape=(4, 8), n_samples=5, dist="laplace", outlier_channels=1, act_outliers=1)
    assert a.W.shape == (2, 4, 8) and a.X.shape == (2, 8, 5) and a.W.dtype == np.float64
    assert np.array_equal(a.W, b.W) and np.array_equal(a.X, b.X)
    assert not np.array_equal(a.W, c.W)


@pytest.mark.parametrize("dist,nu", [("gaussian", 0), ("laplace", 0), ("student_t", 5.0)])
def test_laws_have_unit_variance(dist, nu):
    w = np.asarray(T.layer(0, (400, 500), dist, nu or 4.0))
    assert abs(w.var() - 1) < 0.05
    kurt = ((w - w.mean()) ** 4).mean() / w.var() ** 2
    assert {"gaussian": 2.8 < kurt < 3.2, "laplace": 5.5 < kurt < 6.5, "student_t": kurt > 5.5}[dist]


def test_activations_are_heavy_tailed_per_channel():
    X = np.asarray(T.activations(0, 256, 64, sigma=1.0, outlier_channels=4, outlier_scale=30.0))
    norms = np.sqrt((X**2).mean(1))
    assert norms.max() / np.median(norms) > 20


def test_bad_arguments_are_named():
    with pytest.raises(PihError, match="dist="):
        T.layer(0, (2, 2), "cauchy")
    with pytest.raises(PihError, match="nu="):
        T.layer(0, (2, 2), "student_t", nu=0.0)
    with pytest.raises(PihError, match="outlier_channels="):
        T.layer(0, (2, 2), outlier_channels=5)
    with pytest.raises(PihError, match="n_layers="):
        T.make_model(0, n_layers=0)


def test_loader_npz_and_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    arrs = {"layers.0.q.weight": rng.standard_normal((4, 8)), "layers.0.q.inputs": rng.standard_normal((2, 3, 8))}
    np.savez(tmp_path / "t.npz", **arrs)
    from safetensors.numpy import save_file

    save_file({k: v.astype(np.float32) for k, v in arrs.items()}, str(tmp_path / "t.safetensors"))
    for f in ("t.npz", "t.safetensors"):
        models = T.models_from_tensors(T.load_tensors(tmp_path / f))
        m = models["layers.0.q"]
        assert m.W.shape == (1, 4, 8) and m.X.shape == (1, 8, 6)
        assert np.allclose(m.W[0], arrs["layers.0.q.weight"], atol=1e-6)
    with pytest.raises(PihError, match="inputs"):
        T.models_from_tensors({"a.weight": np.ones((2, 2))})
    with pytest.raises(PihError, match="path="):
        T.load_tensors(tmp_path / "missing.npz")
    np.savez(tmp_path / "nan.npz", w=np.array([np.nan]))
    with pytest.raises(PihError, match="NaN"):
        T.load_tensors(tmp_path / "nan.npz")


def test_a_new_assumption_set_needs_no_change_elsewhere():
    """The recipe in sim/assumptions.py: write a performance map, register it, pass it to a sweep (registered
    inside ``pih.registry.scoped()``, so that it does not outlive the test)."""

    def sqrt_perf(e, lam, dense):
        return -float(np.sqrt((lam * e).sum() / (lam * dense).sum()))

    with registry.scoped():
        mine = AS.register(AS.AssumptionSet("sqrt-test", "M = -sqrt(relative error)", performance=sqrt_perf))
        assert AS.get("sqrt-test") is mine
        pa = Pairing("row x rtn", Prune(0.5, structure="row"), Quantize(4))
        ms = ModelSpec(shape=(8, 16), n_samples=24)
        g_lin = run_grid(pa, [0.25, 0.5], [2, 4, 8], [0], ms, AS.A1, progress=False)
        g_new = run_grid(pa, [0.25, 0.5], [2, 4, 8], [0], ms, mine, progress=False)
        assert np.allclose(g_new.M_P, -np.sqrt(-g_lin.M_P))
        assert np.allclose(g_new.M_qf, -np.sqrt(-g_lin.M_qf))
    assert "sqrt-test" not in AS.ASSUMPTION_SETS


def test_duplicate_assumption_sets_are_refused_and_compare_defaults_are_explicit():
    """A second set under a taken name is refused (never silently replaced); a set registered by a user or a test
    is usable by name but never joins ``pih compare``'s defaults, which are an explicit list of the built-in ones."""
    from pih.commands.compare import _assumption_names

    with pytest.raises(PihError, match="name='A1'"):
        AS.register(AS.AssumptionSet("A1", "another A1"))
    assert AS.get("A1").description.startswith("additive unit errors")
    with registry.scoped():
        AS.register(AS.AssumptionSet("mine-for-compare", "a user's set"))
        names = _assumption_names(None)
        assert "mine-for-compare" not in names and names[: len(AS.COMPARE_DEFAULTS)] == list(AS.COMPARE_DEFAULTS)
        assert _assumption_names(["mine-for-compare"]) == ["mine-for-compare"]
    assert set(AS.COMPARE_DEFAULTS) <= set(AS.ASSUMPTION_SETS)


def test_assumption_sets_adapt_mechanisms():
    from sim.kernels import SimOptions

    assert AS.A2.adapt_options(SimOptions()).reference == "phi"
    assert AS.A2_SEEN.adapt_options(SimOptions(reference="phi")).reference == "seen"
    assert AS.A2.adapt(Quantize(4)).rounding == "stochastic"
    assert AS.ASYM_NOISE.adapt(Quantize(4)).rounding == "down"
    assert AS.A1.adapt(Quantize(4)) == Quantize(4) and AS.A1.adapt_options(SimOptions()) == SimOptions()
    assert AS.A2.adapt(Prune(0.5, "loss", "row")) == Prune(0.5, "loss", "row")
    with pytest.raises(PihError, match="error="):
        AS.AssumptionSet("x", error="bits")
    with pytest.raises(PihError, match="assumptions="):
        AS.get("nope")


def test_the_real_sim_package_is_imported_and_runs_in_float64():
    """A test folder named like the package (tests/sim) once shadowed it as a namespace package when pytest ran
    without the repository on sys.path (``.venv/bin/pytest``; ``python -m pytest`` was unaffected): sim/__init__
    never ran and the simulation tests ran in float32. Guard against that coming back."""
    import jax
    import jax.numpy as jnp

    import sim

    assert sim.__file__ is not None and sim.__file__.endswith("sim/__init__.py")
    assert jax.config.jax_enable_x64 and jnp.asarray(1.0).dtype == jnp.float64
