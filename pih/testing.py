"""Hypothesis strategies for users who extend the theory: tensors, method specs, pairs, assumption sets and
abstract unit models.

Importing this module imports hypothesis and numpy only; :func:`assumption_sets` imports the simulation (JAX)
when it is called. Every tensor strategy draws a seed and distribution parameters and builds the array with a
numpy Generator, so examples are reproducible and shrink towards small seeds, small shapes and mild laws.

    from hypothesis import given
    from pih.testing import weight_tensors, disjoint_pairs

    @given(weight_tensors(max_side=8), disjoint_pairs())
    def test_mine(w, pair): ...
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .methods import MixedPrecision, Prune, Quantize
from .ownership import disjoint_selectivity

DISTS = ("gaussian", "laplace", "student_t")


def _draw_law(rng: np.random.Generator, dist: str, nu: float, shape) -> np.ndarray:
    if dist == "gaussian":
        return rng.standard_normal(shape)
    if dist == "laplace":
        return rng.laplace(0.0, 1 / np.sqrt(2), shape)
    w = rng.standard_t(nu, shape)
    return w * np.sqrt((nu - 2) / nu) if nu > 2 else w


@st.composite
def weight_tensors(draw, shape: tuple[int, int] | None = None, max_side: int = 16, dists=DISTS,
                   nu=None, outliers: bool = True, ties: bool = False) -> np.ndarray:
    """A float64 weight matrix (out, in): Gaussian, Laplace or Student-t (``nu`` drawn from the strategy given),
    optionally with a few outlier input channels, optionally rounded to a coarse grid (many equal magnitudes)."""
    if shape is None:
        shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    dist = draw(st.sampled_from(dists))
    nu_v = draw(st.floats(2.5, 30.0) if nu is None else nu) if dist == "student_t" else 0.0
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = _draw_law(rng, dist, nu_v, shape)
    if outliers:
        n_out = draw(st.integers(0, min(2, shape[1])))
        if n_out:
            w[:, rng.choice(shape[1], n_out, replace=False)] *= draw(st.floats(2.0, 20.0))
    if ties:
        w = np.round(w * 2) / 2
    return w


@st.composite
def calibration_inputs(draw, in_features: int, n_samples: int | None = None, max_samples: int = 32) -> np.ndarray:
    """Calibration inputs X (in_features, n) with log-normal per-channel scales and optional outlier channels,
    like LLM activations."""
    n = n_samples or draw(st.integers(1, max_samples))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sigma = draw(st.floats(0.0, 2.0))
    scale = np.exp(sigma * rng.standard_normal(in_features))
    n_out = draw(st.integers(0, min(2, in_features)))
    if n_out:
        scale[rng.choice(in_features, n_out, replace=False)] *= draw(st.floats(5.0, 50.0))
    return scale[:, None] * rng.standard_normal((in_features, n))


@st.composite
def layers(draw, shape: tuple[int, int] | None = None, max_side: int = 16, n_samples: int | None = None):
    """(W, X): a weight matrix and matching calibration inputs."""
    w = draw(weight_tensors(shape=shape, max_side=max_side))
    return w, draw(calibration_inputs(w.shape[1], n_samples))


ratios = st.floats(0.0, 0.95).map(lambda r: round(r, 4))


@st.composite
def prune_specs(draw, criteria=("magnitude", "wanda", "sparsegpt", "loss"),
                structures=("unstructured", "row", "block", "2:4"), ratio=ratios) -> Prune:
    """A valid pih.Prune (invalid combinations are skipped: loss needs a structured removal, N:M fixes the
    ratio)."""
    crit = draw(st.sampled_from(criteria))
    allowed = [s for s in structures if not (crit == "loss" and s not in ("row", "block", "head"))]
    struct = draw(st.sampled_from(allowed or ["row"]))
    if ":" in struct:
        n, m = (int(x) for x in struct.split(":"))
        return Prune(1 - n / m, crit if crit != "loss" else "magnitude", struct)
    return Prune(draw(ratio), crit if allowed else "magnitude", struct)


@st.composite
def quant_specs(draw, bits=None, groups=("channel", "tensor", 4, 8), rotation=(None, "hadamard"),
                update=("none", "gptq"), rounding=("nearest", "stochastic")) -> Quantize:
    """A valid pih.Quantize (bits: a strategy, default integers in [2, 8])."""
    b = draw(st.integers(2, 8) if bits is None else bits)
    return Quantize(b, draw(st.sampled_from(groups)), draw(st.booleans()),
                    draw(st.sampled_from(("absmax", "mse"))), draw(st.sampled_from(rotation)),
                    draw(st.sampled_from(update)), draw(st.sampled_from(rounding)))


def mixed_specs(n_units: int, bits=None) -> st.SearchStrategy[MixedPrecision]:
    """A pih.MixedPrecision with one bit width per unit (bits: a strategy, default integers in [2, 8])."""
    bits = st.integers(2, 8) if bits is None else bits
    return st.lists(bits, min_size=n_units, max_size=n_units).map(lambda b: MixedPrecision(tuple(b)))


def pairs(disjoint: bool | None = None, prune=None, quant=None) -> st.SearchStrategy[tuple[Prune, Quantize]]:
    """(Prune, Quantize) pairs; ``disjoint`` True/False keeps only (non-)disjointly selective pairs."""
    s = st.tuples(prune_specs() if prune is None else prune, quant_specs() if quant is None else quant)
    if disjoint is None:
        return s
    return s.filter(lambda pq: disjoint_selectivity(*pq) == disjoint)


def disjoint_pairs(**kw):
    """Disjointly selective pairs (t_Q ≤ t_P), e.g. row removal with per-row quantizers, block removal."""
    return pairs(True, prune=prune_specs(structures=("row", "block"), **kw))


def interfering_pairs(**kw):
    """Pairs with t_P < t_Q: unstructured or N:M pruning inside shared quantization scales."""
    return pairs(False, prune=prune_specs(structures=("unstructured", "2:4"), **kw))


def assumption_sets(names=None):
    """Registered simulation assumption sets (imports ``sim``, hence JAX, when called)."""
    from sim.assumptions import ASSUMPTION_SETS

    keys = sorted(ASSUMPTION_SETS) if names is None else list(names)
    return st.sampled_from([ASSUMPTION_SETS[k] for k in keys])


@st.composite
def unit_models(draw, max_units: int = 8, scale_family: bool = False):
    """An abstract A1 instance: removal errors r_u, quantization errors q_u (or a SCALE pattern v_u), sensitivities
    λ_u and a pruning budget k, as in proofs/t2_monotonicity.md. Values are non-negative floats on a grid of
    1/8 so that ties occur."""
    n = draw(st.integers(1, max_units))
    grid = st.integers(0, 40).map(lambda i: i / 8)
    r = np.array(draw(st.lists(grid, min_size=n, max_size=n)))
    q = np.array(draw(st.lists(grid, min_size=n, max_size=n)))
    lam = np.array(draw(st.lists(st.integers(0, 16).map(lambda i: i / 4), min_size=n, max_size=n)))
    k = draw(st.integers(0, n))
    out = {"r": r, "lam": lam, "k": k}
    out["v" if scale_family else "q"] = q
    return out
