"""Shared helpers for the simulation tests: small fixed shapes (one compile per configuration) and strategies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import sim  # noqa: F401  (float64)
from pih import Prune, Quantize
from sim import pipeline as pl
from sim.kernels import SimOptions
from sim.tensors import Model

L, O, I, N = 2, 8, 16, 24  # layers, rows, inputs, calibration samples

# symmetric quantizers on the odd grid (Q(−x) = −Q(x)), the grid these tests' pinned numbers were measured on
DISJOINT_CONFIGS = {
    "row-magnitude x rtn": (Prune(0.5, structure="row"), Quantize(4, grid="odd")),
    "row-loss x rtn-asym-mse": (Prune(0.5, "loss", "row"), Quantize(4, 4, False, "mse")),
    "row-loss x gptq": (Prune(0.5, "loss", "row"), Quantize(4, update="gptq", grid="odd")),
    "row-loss x stochastic": (Prune(0.5, "loss", "row"), Quantize(4, rounding="stochastic", grid="odd")),
    "block x rtn-g4": (Prune(0.5, "loss", "block"), Quantize(4, 4, grid="odd")),
}


def model_from(W, X) -> Model:
    return Model(jnp.asarray(W), jnp.asarray(X))


@st.composite
def models(draw, shape=(L, O, I), n=N, ties=False):
    """A model of fixed shape: Gaussian/Laplace/Student-t weights, optional outlier channels, heavy-tailed
    activations. Fixed shapes keep one compiled function per configuration."""
    from pih.testing import calibration_inputs, weight_tensors

    Ws = [draw(weight_tensors(shape=shape[1:], ties=ties)) for _ in range(shape[0])]
    Xs = [draw(calibration_inputs(shape[2], n)) for _ in range(shape[0])]
    scales = draw(st.lists(st.floats(0.25, 4.0), min_size=shape[0], max_size=shape[0]))
    return model_from(np.stack([w * s for w, s in zip(Ws, scales, strict=True)]), np.stack(Xs))


def pair(m: Model, prune, quant, p, b, seed=0, lam=None, options=None):
    """sim.pipeline.run_pair (jitted, the specs' static parts) as numpy arrays; ``options``: SimOptions or a dict."""
    lam = jnp.ones(m.W.shape[:2]) if lam is None else jnp.asarray(lam)
    r = pl.run_pair_jit(m, pl.canonical(prune), pl.canonical(quant), jnp.float64(p), jnp.float64(b),
                        jax.random.PRNGKey(seed), lam, SimOptions.of(options))
    return {k: np.asarray(v) for k, v in r._asdict().items()}


def metric(a, r, which, lam=None):
    lam = np.ones(r["dense_output"].shape) if lam is None else lam
    return a.metric(r[f"{which}_weight"], r[f"{which}_output"], r["dense_output"], r["removal_weight"], lam)


def advantage(a, r, lam=None) -> float:
    """A(Q→P) = M(P∘Q) − M(Q∘P) measured on the compressed tensors."""
    return metric(a, r, "qf", lam) - metric(a, r, "pf", lam)


def deltas(a, r, lam=None):
    """(Δ_PQ, Δ_QP) in error units: M(disjoint reconstruction) − M(actual), per order."""
    lam = np.ones(r["dense_output"].shape) if lam is None else lam
    out = []
    for o in ("pf", "qf"):
        md = a.metric(r[f"{o}_disjoint_weight"], r[f"{o}_disjoint_output"], r["dense_output"], r["removal_weight"], lam)
        out.append(md - metric(a, r, o, lam))
    return tuple(out)
