"""Multi-layer chains with sequential calibration: the error of an early stage reaching the later stages.

A single layer cannot show the one route to the Progressive Intensity trend that the proofs leave open (T2.4:
PIH holds exactly when later stages amplify the first method's error). Real pipelines are multi-layer and
calibrate block by block on the outputs of blocks already compressed. This module models exactly that:

- a chain of ``depth`` square layers with a residual stream, ``h_{l+1} = h_l + act(W_l h_l)`` (or without the
  residual, ``h_{l+1} = act(W_l h_l)``), on heavy-tailed synthetic inputs (:func:`sim.tensors.activations`);
- each stage of a pipeline runs over the layers in order, and the calibration inputs of layer ``l`` are either
  the outputs of layers ``< l`` *as already compressed* (``calibration="sequential"``, what GPTQ, SparseGPT and
  Wanda do on real models) or the dense model's inputs (``"dense"``, the single-layer simulation's view);
- the performance is measured at the chain's output on held-out inputs: M = −||f'(X) − f(X)||² / ||f(X)||².
  Nothing about the order or the CER enters: the chain compresses actual tensors and measures the error.

The per-layer mechanisms are the simulation's own (``sim.pipeline._layer_prune`` / ``_layer_quant``), so a
chain of depth 1 with dense calibration is the single-layer simulation (a test pins that).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pih.errors import bad
from pih.methods import Prune, Quantize
from pih.records import Provenance, Record, Store

from . import pipeline as pl
from .tensors import activations, layer

ACTIVATIONS = ("gelu", "relu", "tanh", "linear")
CALIBRATION = ("sequential", "dense")


@dataclass(frozen=True)
class ChainSpec:
    """A synthetic chain: ``depth`` layers of ``width`` × ``width``; weights of law ``dist`` scaled by
    ``gain``/√width; inputs with log-normal channel scales (``act_sigma``) and ``act_outliers`` outlier channels."""

    depth: int = 4
    width: int = 64
    n_calib: int = 256
    n_eval: int = 256
    activation: str = "gelu"
    residual: bool = True
    gain: float = 1.0
    dist: str = "student_t"
    nu: float = 4.0
    act_sigma: float = 1.0
    act_outliers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or self.depth < 1:
            raise bad("depth", self.depth, "must be a positive integer")
        if not isinstance(self.width, int) or self.width < 2:
            raise bad("width", self.width, "must be an integer >= 2")
        if self.n_calib < 1 or self.n_eval < 1:
            raise bad("n_calib, n_eval", (self.n_calib, self.n_eval), "must be >= 1")
        if self.activation not in ACTIVATIONS:
            raise bad("activation", self.activation, f"must be one of {ACTIVATIONS}")
        if not self.gain > 0:
            raise bad("gain", self.gain, "must be > 0")

    @property
    def label(self) -> str:
        res = "res" if self.residual else "plain"
        return (f"chain{self.depth}x{self.width}-{self.activation}-{res}-g{self.gain:g}-{self.dist}"
                f"{self.nu:g}-n{self.n_calib}")

    def make(self, seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(W (depth, width, width), calibration inputs (width, n_calib), held-out inputs (width, n_eval))."""
        keys = jax.random.split(jax.random.PRNGKey(int(seed)), self.depth + 1)
        W = jnp.stack([layer(keys[l], (self.width, self.width), self.dist, self.nu) for l in range(self.depth)])
        W = W * (self.gain / np.sqrt(self.width))
        X = activations(keys[-1], self.width, self.n_calib + self.n_eval, self.act_sigma, self.act_outliers)
        return W, X[:, : self.n_calib], X[:, self.n_calib:]


def _act(name: str, z):
    if name == "gelu":
        return jax.nn.gelu(z)
    if name == "relu":
        return jax.nn.relu(z)
    if name == "tanh":
        return jnp.tanh(z)
    return z


def _step(spec: ChainSpec, W, h):
    y = _act(spec.activation, W @ h)
    return h + y if spec.residual else y


def forward(spec: ChainSpec, W, X) -> jax.Array:
    """The chain's output for inputs X (width, n)."""
    h = X
    for l in range(W.shape[0]):
        h = _step(spec, W[l], h)
    return h


def compress(spec: ChainSpec, W0, Xc, stages: tuple, params: tuple, keys, calibration: str = "sequential"):
    """Apply ``stages`` (in order; ``params``: one scalar per stage, ratio or bits) to the chain, layer by layer.

    With ``calibration="sequential"`` layer ``l`` of a stage is calibrated on the outputs of layers ``< l`` as
    compressed so far (this stage and all earlier ones); with ``"dense"`` on the dense chain's inputs to layer
    ``l``. A pruning mask survives later stages exactly. Returns (W', keep).
    """
    L = W0.shape[0]
    dense_in = []
    h = Xc
    for l in range(L):
        dense_in.append(h)
        h = _step(spec, W0[l], h)
    W = W0
    keep = jnp.ones(W0.shape, bool)
    last_q, last_b = None, None
    ones = jnp.ones((W0.shape[1],))
    for si, (st, p) in enumerate(zip(stages, params, strict=True)):
        lk = jax.random.split(keys[si], L)
        h = Xc
        newW, newK = [], []
        for l in range(L):
            x = h if calibration == "sequential" else dense_in[l]
            H = x @ x.T
            if st.kind == "prune":
                wl, kl = pl._layer_prune(st, W[l], H, keep[l], W0[l], ones, p, lk[l], last_q, last_b)
            elif st.kind == "quantize":
                wl, kl = pl._layer_quant(st, W[l], H, keep[l], jnp.maximum(p, 2.0), lk[l]), keep[l]
            else:  # pragma: no cover - guarded in run_chain_grid
                raise bad("stage", st, "chains take prune and quantize stages")
            newW.append(wl)
            newK.append(kl)
            h = _step(spec, wl, h)  # the next layer sees this layer as compressed
        W, keep = jnp.stack(newW), jnp.stack(newK)
        if st.kind == "quantize":
            last_q, last_b = st, p
    return W, keep


def _metrics(spec: ChainSpec, W0, W, Xc, Xe):
    """(M at the chain output on held-out inputs, M of the layer-wise additive view on dense inputs)."""
    f0, f1 = forward(spec, W0, Xe), forward(spec, W, Xe)
    m_chain = -jnp.sum((f1 - f0) ** 2) / jnp.sum(f0**2)
    h, num, den = Xc, 0.0, 0.0
    for l in range(W0.shape[0]):
        num = num + jnp.sum(((W0[l] - W[l]) @ h) ** 2)
        den = den + jnp.sum((W0[l] @ h) ** 2)
        h = _step(spec, W0[l], h)
    return m_chain, -num / den


@partial(jax.jit, static_argnames=("spec", "stages", "calibration"))
def _grid_one(spec, stages, calibration, W0, Xc, Xe, keys, params):
    """M (at the output, layer-wise) of one pipeline over the grid: ``params`` (n_settings, n_stages)."""

    def run(prm):
        W, _ = compress(spec, W0, Xc, stages, tuple(prm[i] for i in range(len(stages))), keys, calibration)
        return _metrics(spec, W0, W, Xc, Xe)

    return jax.vmap(run)(params)


def _grid(spec, pstage, qstage, calibration, W0, Xc, Xe, key, ratios, bits):
    """M of P alone per ratio (1, R), Q alone per bit width (B, 1), P→Q and Q→P per (bits, ratio) (B, R), at the
    output and layer-wise. Shared keys: a method
    uses the same randomness in every order. One jitted program per pipeline: a single program holding the four
    independent pipelines was seen to hang XLA's CPU runtime (all threads idle, the result never ready)."""
    kp, kq = jax.random.split(key)
    R, B = jnp.asarray(ratios, jnp.float64), jnp.asarray(bits, jnp.float64)
    r, b = jnp.meshgrid(R, B, indexing="xy")
    r, b = r.ravel(), b.ravel()  # bits-major: index = bi * R + ri
    out = {}
    # each method alone once per setting of its own: P as (1, R), Q as (B, 1)
    for name, stages, params, keys, shape in (
            ("P", (pstage,), R[:, None], (kp,), (1, len(ratios))),
            ("Q", (qstage,), B[:, None], (kq,), (len(bits), 1)),
            ("PQ", (pstage, qstage), jnp.stack([r, b], 1), (kp, kq), (len(bits), len(ratios))),
            ("QP", (qstage, pstage), jnp.stack([b, r], 1), (kq, kp), (len(bits), len(ratios)))):
        m_out, m_lw = jax.device_get(_grid_one(spec, stages, calibration, W0, Xc, Xe, jnp.stack(keys), params))
        out[name] = (np.asarray(m_out).reshape(shape), np.asarray(m_lw).reshape(shape))
    return out


def provenance(spec: ChainSpec, calibration: str, view: str, seed: int) -> Provenance:
    return Provenance(backend="sim-chain", model=spec.label, data="synthetic",
                      metric=f"M[{'chain output' if view == 'output' else 'layer-wise sum'}]",
                      calibration=f"{calibration} calibration, synthetic activations sigma={spec.act_sigma} "
                                  f"outliers={spec.act_outliers}",
                      calibration_size=spec.n_calib, seed=seed,
                      settings={"chain": asdict(spec), "calibration": calibration, "view": view,
                                "n_eval": spec.n_eval})


def run_chain_grid(spec: ChainSpec, prune: Prune, quant: Quantize, ratios, bits, seeds, calibration="sequential",
                   store: Store | None = None, progress: bool = True) -> list[Record]:
    """Records of the grid (each method alone, both orders) at the chain's output and in the layer-wise view.

    With a ``store``, each finished seed is appended at once and a rerun skips seeds already stored.
    """
    if calibration not in CALIBRATION:
        raise bad("calibration", calibration, f"must be one of {CALIBRATION}")
    if not isinstance(prune, Prune) or prune.structure not in ("unstructured", "nm"):
        raise bad("prune", prune, "chains take unstructured or N:M pih.Prune specs")
    if not isinstance(quant, Quantize):
        raise bad("quant", quant, "must be a pih.Quantize spec")
    if quant.rotation:
        raise bad("quant.rotation", quant.rotation, "rotation is not modelled in chains")
    pstage, _ = pl.stage_from_spec(prune)
    qstage, _ = pl.stage_from_spec(quant)
    ratios = [float(r) for r in ratios]
    bits = [int(b) for b in bits]
    for r in ratios:
        prune.replace(ratio=r)
    for b in bits:
        quant.replace(bits=b)
    out: list[Record] = []
    for seed in tqdm(list(seeds), desc=f"chain {prune.criterion} x {quant.label}", file=sys.stderr,
                     disable=not progress, leave=False):
        recs = _records(spec, prune, quant, ratios, bits, int(seed), calibration, None)
        if store is not None and all(store.has(r.key) for r in recs):
            got = {r.key: r for r in store.records()}
            out += [got[r.key] for r in recs]
            continue
        W0, Xc, Xe = spec.make(int(seed))
        res = _grid(spec, pstage, qstage, calibration, W0, Xc, Xe, jax.random.PRNGKey(int(seed)), ratios, bits)
        recs = _records(spec, prune, quant, ratios, bits, int(seed), calibration, res)
        if store is not None:
            for r in recs:
                if not store.has(r.key):
                    store.append(r)
        out += recs
    return out


def _records(spec, prune, quant, ratios, bits, seed, calibration, res) -> list[Record]:
    recs = []
    for vi, view in enumerate(("output", "layerwise")):
        prov = provenance(spec, calibration, view, seed)

        def val(k, bi, ri, _vi=vi):
            return 0.0 if res is None else float(np.asarray(res[k][_vi])[bi, ri])

        for ri, r in enumerate(ratios):
            recs.append(Record(prov, (prune.replace(ratio=r),), val("P", 0, ri), {"ratio": r}))
        for bi, b in enumerate(bits):
            recs.append(Record(prov, (quant.replace(bits=b),), val("Q", bi, 0), {"bits": b}))
        for bi, b in enumerate(bits):
            for ri, r in enumerate(ratios):
                P, Q = prune.replace(ratio=r), quant.replace(bits=b)
                recs.append(Record(prov, (P, Q), val("PQ", bi, ri), {"ratio": r, "bits": b}))
                recs.append(Record(prov, (Q, P), val("QP", bi, ri), {"ratio": r, "bits": b}))
    return recs
