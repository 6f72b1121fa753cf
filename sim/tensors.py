"""Tensors to compress: synthetic weight layers, LLM-like calibration activations, exported real tensors.

Every generator is a pure function of a JAX key (or an integer seed), so a run is reproducible by seed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pih.errors import bad, check_tensor

DISTS = ("gaussian", "laplace", "student_t")


def _key(seed_or_key):
    if isinstance(seed_or_key, (int, np.integer)):
        return jax.random.PRNGKey(int(seed_or_key))
    return seed_or_key


def student_t(key, nu: float, shape) -> jax.Array:
    """Student-t(nu) samples by Bailey's polar method without rejection: with θ ~ U(0, 2π) and V ~ U(0, 1),
    T = cos θ · sqrt(nu (V^(−2/nu) − 1)) (the point (√V cos θ, √V sin θ) is uniform in the unit disk). Exact, and
    much faster than gamma-based sampling on CPU."""
    k1, k2 = jax.random.split(_key(key))
    theta = jax.random.uniform(k1, shape, minval=0.0, maxval=2 * jnp.pi)
    v = jax.random.uniform(k2, shape, minval=jnp.finfo(jnp.float64).tiny, maxval=1.0)
    return jnp.cos(theta) * jnp.sqrt(nu * jnp.expm1(-2.0 / nu * jnp.log(v)))


def _check_layer(shape, dist, nu, outlier_channels) -> None:
    if dist not in DISTS:
        raise bad("dist", dist, f"must be one of {DISTS}")
    if len(shape) != 2 or min(shape) < 1:
        raise bad("shape", shape, "expected (out_features, in_features), both >= 1")
    if dist == "student_t" and not nu > 0:
        raise bad("nu", nu, "Student-t degrees of freedom must be positive")
    if not 0 <= outlier_channels <= shape[1]:
        raise bad("outlier_channels", outlier_channels, f"must lie in [0, in_features={shape[1]}]")


def layer(key, shape: tuple[int, int], dist: str = "gaussian", nu: float = 4.0, outlier_channels: int = 0,
          outlier_scale: float = 8.0) -> jax.Array:
    """A weight matrix (out_features, in_features) with unit-variance entries of law ``dist``.

    dist: gaussian | laplace | student_t (``nu`` degrees of freedom; scaled to unit variance when nu > 2).
    ``outlier_channels`` input columns (the first ones; their position does not matter to any mechanism) are
    multiplied by ``outlier_scale``, as the outlier features of LLM weights.
    """
    _check_layer(shape, dist, nu, outlier_channels)
    key = _key(key)
    if dist == "gaussian":
        w = jax.random.normal(key, shape)
    elif dist == "laplace":
        w = jax.random.laplace(key, shape) / jnp.sqrt(2.0)
    else:
        w = student_t(key, nu, shape)
        if nu > 2:
            w = w * jnp.sqrt((nu - 2.0) / nu)
    col = jnp.where(jnp.arange(shape[1]) < outlier_channels, outlier_scale, 1.0)
    return w * col[None, :]


def activations(key, in_features: int, n_samples: int, sigma: float = 1.0, outlier_channels: int = 0,
                outlier_scale: float = 30.0, nu: float | None = None) -> jax.Array:
    """Calibration inputs X (in_features, n_samples) with heavy-tailed per-channel scales, as LLM activations.

    Channel scales are log-normal (log-std ``sigma``); ``outlier_channels`` channels get ``outlier_scale``
    times more (the massive activations of LLMs). Entries are Gaussian, or Student-t with ``nu`` if given.
    """
    if in_features < 1 or n_samples < 1:
        raise bad("shape", (in_features, n_samples), "in_features and n_samples must be >= 1")
    if sigma < 0:
        raise bad("sigma", sigma, "must be >= 0")
    k1, k2, k3 = jax.random.split(_key(key), 3)
    scale = jnp.exp(sigma * jax.random.normal(k1, (in_features,)))
    outl = jax.random.permutation(k3, in_features) < outlier_channels
    scale = jnp.where(outl, scale * outlier_scale, scale)
    shape = (in_features, n_samples)
    z = jax.random.normal(k2, shape) if nu is None else student_t(k2, nu, shape)
    return scale[:, None] * z


class Model(NamedTuple):
    """L independent linear layers of one shape: weights W (L, out, in) and calibration inputs X (L, in, n)."""

    W: jax.Array
    X: jax.Array

    @property
    def n_layers(self) -> int:
        return int(self.W.shape[0])


def make_model(seed: int, n_layers: int = 1, shape: tuple[int, int] = (64, 64), n_samples: int = 128,
               dist: str = "gaussian", nu: float = 4.0, outlier_channels: int = 0, act_sigma: float = 1.0,
               act_outliers: int = 0, layer_scales: bool = False) -> Model:
    """A synthetic model of ``n_layers`` layers; ``layer_scales`` gives each layer its own log-normal scale."""
    if n_layers < 1:
        raise bad("n_layers", n_layers, "must be >= 1")
    _check_layer(tuple(shape), dist, nu, outlier_channels)
    if n_samples < 1 or act_sigma < 0:
        raise bad("n_samples, act_sigma", (n_samples, act_sigma), "need n_samples >= 1 and act_sigma >= 0")
    return _make_model(jax.random.PRNGKey(int(seed)), n_layers, tuple(shape), n_samples, dist, float(nu),
                       outlier_channels, float(act_sigma), act_outliers, bool(layer_scales))


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6, 7, 8, 9))
def _make_model(key, n_layers, shape, n_samples, dist, nu, outlier_channels, act_sigma, act_outliers, layer_scales):
    keys = jax.random.split(key, 3 * n_layers).reshape(n_layers, 3, -1)
    Ws, Xs = [], []
    for l in range(n_layers):
        w = layer(keys[l, 0], shape, dist, nu, outlier_channels)
        if layer_scales:
            w = w * jnp.exp(0.5 * jax.random.normal(keys[l, 2], ()))
        Ws.append(w)
        Xs.append(activations(keys[l, 1], shape[1], n_samples, act_sigma, act_outliers))
    return Model(jnp.stack(Ws), jnp.stack(Xs))


def from_arrays(W, X) -> Model:
    """A one-layer model from numpy arrays W (out, in) and X (in, n) (or stacked (L, ...) arrays)."""
    W = check_tensor("W", W).astype(np.float64)
    X = check_tensor("X", X).astype(np.float64)
    if W.ndim == 2:
        W, X = W[None], X[None]
    if W.ndim != 3 or X.ndim != 3 or W.shape[0] != X.shape[0] or W.shape[2] != X.shape[1]:
        raise bad("X", f"array of shape {X.shape}", f"does not match W of shape {W.shape} (need X: (in, n))")
    return Model(jnp.asarray(W), jnp.asarray(X))


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read exported tensors (``.npz`` or ``.safetensors``) as float64 numpy arrays, by name."""
    p = Path(path)
    if not p.exists():
        raise bad("path", str(path), "no such file")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    elif p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        out = load_file(str(p))
    else:
        raise bad("path", str(path), "expected a .npz or .safetensors file")
    # non-numeric entries (the bridge export's JSON ``meta`` string) are not tensors: skip them
    return {k: check_tensor(k, v).astype(np.float64) for k, v in out.items() if np.asarray(v).dtype.kind in "fiub"}


def _layer_keys(k: str) -> tuple[str, str] | None:
    """(layer name, its inputs' key) for a weight key in either export format, else None."""
    if k.startswith("W::"):
        return k[3:], "X::" + k[3:]
    if k.endswith(".weight"):
        return k[: -len(".weight")], k[: -len(".weight")] + ".inputs"
    return None


def models_from_tensors(tensors: dict[str, np.ndarray], max_samples: int | None = None) -> dict[str, Model]:
    """One-layer models from exported tensors: weight ``<name>.weight`` (out, in) with inputs ``<name>.inputs``,
    or the torch bridge's export format (:func:`pih.bridge.export.export_layers`): ``W::<name>`` with ``X::<name>``.

    Inputs are stored as the torch bridge captures them, (n_samples, in_features) (leading batch dimensions are
    flattened). A weight without its inputs raises (the output error needs them).
    """
    models = {}
    for k, w in tensors.items():
        names = _layer_keys(k)
        if names is None or w.ndim != 2:
            continue
        name, xk = names
        if xk not in tensors:
            raise bad("tensors", name, f"weight {k!r} has no calibration inputs {xk!r}")
        x = tensors[xk].reshape(-1, tensors[xk].shape[-1])
        if max_samples:
            x = x[:max_samples]
        models[name] = from_arrays(w, x.T)
    if not models:
        raise bad("tensors", sorted(tensors)[:5], "no '<name>.weight' or 'W::<name>' 2-D tensors found")
    return models
