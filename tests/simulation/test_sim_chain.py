"""Multi-layer chains with sequential calibration (sim/chain.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pih import PihError, Prune, Quantize, Store, registry
from pih.analysis import analyze_grid
from pih.registry import Stats
from sim import chain
from sim import pipeline as pl
from sim.chain import ChainSpec, compress, run_chain_grid
from sim.kernels import initial_state
from sim.tensors import Model

P, Q = Prune(0.5, "sparsegpt"), Quantize(3, symmetric=False, update="gptq")
SMALL = ChainSpec(depth=3, width=16, n_calib=64, n_eval=32)


def _stages():
    return pl.stage_from_spec(P)[0], pl.stage_from_spec(Q)[0]


def test_one_layer_layerwise_view_is_the_single_layer_simulation():
    """Depth 1: the chain's layer-wise M of both orders equals sim.pipeline.run_pair's relative output error
    (the chain's sequential loop and run_pair's vmapped one run the same executor and kernels)."""
    spec = ChainSpec(depth=1, width=16, n_calib=64, n_eval=32)
    recs = run_chain_grid(spec, P, Q, [0.5], [3], [0], "dense", progress=False)
    by = {(r.provenance.settings["view"], r.order): r.value for r in recs}
    W0, Xc, _ = spec.make(0)
    ps, qs = _stages()
    res = pl.run_pair(Model(W0, Xc[None]), ps, qs, 0.5, 3.0, jax.random.PRNGKey(0))
    dense = float(res.dense_output.sum())
    pq, qp = (P.replace(ratio=0.5), Q.replace(bits=3)), (Q.replace(bits=3), P.replace(ratio=0.5))
    from pih import pipeline_label

    assert by[("layerwise", pipeline_label(pq))] == pytest.approx(-float(res.pf_output.sum()) / dense, rel=1e-9)
    assert by[("layerwise", pipeline_label(qp))] == pytest.approx(-float(res.qf_output.sum()) / dense, rel=1e-9)


def test_sequential_calibration_uses_the_compressed_prefix():
    """Layer 1 of a stage is calibrated on layer 0's output *as compressed*: rebuilt by hand, step by step."""
    W0, Xc, _ = SMALL.make(1)
    ps, _ = _stages()
    key = jax.random.PRNGKey(3)
    W, keep = compress(SMALL, W0, Xc, (ps,), (0.5,), key[None], "sequential")
    lk = jax.random.split(key, SMALL.depth)
    h = Xc
    kernel = registry.kernel_for(ps, "sim")
    for l in range(SMALL.depth):
        H = h @ h.T
        wl, st = kernel(ps, W0[l], Stats(H=H, norm2=jnp.diag(H)), initial_state(W0[l].shape, "keep"), lk[l], 0.5)
        np.testing.assert_allclose(np.asarray(W[l]), np.asarray(wl), atol=1e-12)
        assert bool((keep[l] == ~st.pruned).all())
        h = chain._step(SMALL, wl, h)
    # the dense-calibrated chain differs after layer 0 (a broken "sequential" that used dense inputs is caught)
    Wd, _ = compress(SMALL, W0, Xc, (ps,), (0.5,), key[None], "dense")
    np.testing.assert_allclose(np.asarray(Wd[0]), np.asarray(W[0]), atol=1e-12)
    assert float(jnp.abs(Wd[1:] - W[1:]).max()) > 1e-6


def test_masks_survive_later_stages_and_depth_one_ignores_calibration_mode():
    W0, Xc, _ = SMALL.make(2)
    ps, qs = _stages()
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    W, keep = compress(SMALL, W0, Xc, (ps, qs), (0.5, 3.0), keys, "sequential")
    assert float(jnp.abs(W * ~keep).max()) == 0.0
    assert 0.45 < float((~keep).mean()) < 0.55
    one = ChainSpec(depth=1, width=16, n_calib=64, n_eval=32)
    a = run_chain_grid(one, P, Q, [0.5], [3], [0], "sequential", progress=False)
    b = run_chain_grid(one, P, Q, [0.5], [3], [0], "dense", progress=False)
    assert [r.value for r in a] == [r.value for r in b]


def test_grid_records_analyse_and_resume_from_store(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    recs = run_chain_grid(SMALL, P, Q, [0.3, 0.6], [2, 4, 8], [0], "sequential", store, progress=False)
    assert len(recs) == 2 * (2 + 3 + 2 * 6)
    out = [r for r in recs if r.provenance.settings["view"] == "output"]
    g = analyze_grid(out, n_boot=50)
    assert len(g.rows) == 6
    assert all(np.isfinite(r.advantage_qp) for r in g.rows)
    assert all(r.value <= 0 for r in recs)

    def boom(*a, **k):
        raise AssertionError("recomputed a stored seed")

    monkeypatch.setattr(chain, "_grid", boom)
    again = run_chain_grid(SMALL, P, Q, [0.3, 0.6], [2, 4, 8], [0], "sequential", store, progress=False)
    assert [r.value for r in again] == [r.value for r in recs]


@pytest.mark.parametrize("kw, arg", [({"depth": 0}, "depth"), ({"activation": "swish"}, "activation"),
                                     ({"gain": 0.0}, "gain"), ({"width": 1}, "width")])
def test_bad_chain_specs(kw, arg):
    with pytest.raises(PihError, match=arg):
        ChainSpec(**kw)


def test_bad_grid_inputs():
    with pytest.raises(PihError, match="calibration"):
        run_chain_grid(SMALL, P, Q, [0.5], [3], [0], "lazy", progress=False)
    with pytest.raises(PihError, match="prune"):
        run_chain_grid(SMALL, Prune(0.5, structure="row"), Q, [0.5], [3], [0], progress=False)
    with pytest.raises(PihError, match="rotation"):
        run_chain_grid(SMALL, P, Quantize(4, rotation="hadamard"), [0.5], [3], [0], progress=False)


def test_chain_preset_writes_report_and_summary(tmp_path, monkeypatch):
    """The preset end to end on one tiny chain and one pairing (the full preset is the committed result)."""
    from sim import presets

    monkeypatch.setattr(presets, "chain_specs", lambda quick: {"tiny": ChainSpec(2, 16, 64, 32)})
    monkeypatch.setattr(presets, "chain_pairings", lambda: {"magnitude x RTN": (Prune(0.5), Quantize(4, grid="odd"))})
    s = presets.run_preset("chain", tmp_path, quick=True, seeds=1, progress=False)
    assert {(r["calibration"], r["view"]) for r in s["rows"]} == {(c, v) for c in ("sequential", "dense")
                                                                   for v in ("output", "layerwise")}
    assert all(r["n_points"] == 6 for r in s["rows"])
    assert (tmp_path / "report.md").read_text().count("| tiny |") == 4
    assert (tmp_path / "chain.png").stat().st_size > 0
