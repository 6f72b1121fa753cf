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

The per-layer kernels and the executor loop are the simulation's own (:func:`sim.pipeline.execute` with the
registered kernels), so a chain of depth 1 with dense calibration is the single-layer simulation (a test pins
that).
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
from pih.records import Provenance, Record, Store, Task, grid_coords, grid_role, run_sweep
from pih.registry import Stats

from . import pipeline as pl
from .kernels import DEFAULT, LayerContext, SimOptions
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


def compress(spec: ChainSpec, W0, Xc, pipeline: tuple, settings: tuple, keys, calibration: str = "sequential",
             options: SimOptions | None = None):
    """Apply ``pipeline`` (core specs, in order; ``settings``: one per stage, ratio or bits) to the chain, layer by
    layer, through the simulation's one executor loop (:func:`sim.pipeline.execute`).

    With ``calibration="sequential"`` layer ``l`` of a stage is calibrated on the outputs of layers ``< l`` as
    compressed so far (this stage and all earlier ones); with ``"dense"`` on the dense chain's inputs to layer
    ``l``. A pruning mask survives later stages exactly. Returns (W', keep).
    """
    options = DEFAULT if options is None else options
    L = W0.shape[0]
    dense_in = []
    h = Xc
    for l in range(L):
        dense_in.append(h)
        h = _step(spec, W0[l], h)
    ones = jnp.ones((W0.shape[1],))

    def in_sequence(stage, kernel, W, state, key, setting):
        lk = jax.random.split(key, L)
        h, outs, states = Xc, [], []
        for l in range(L):
            x = h if calibration == "sequential" else dense_in[l]
            H = x @ x.T
            wl, sl = kernel(stage, W[l], Stats(H=H, norm2=jnp.diag(H)), jax.tree_util.tree_map(lambda a, _l=l: a[_l],
                            state), lk[l], setting, options=options, ctx=LayerContext(W0[l], ones))
            outs.append(wl)
            states.append(sl)
            h = _step(spec, wl, h)  # the next layer sees this layer as compressed
        return jnp.stack(outs), jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)

    values = pl.stage_settings(pipeline, settings, L)
    stages = tuple(pl.canonical(s) for s in pipeline)
    W, state, *_ = pl.execute(stages, values, keys, W0, in_sequence, tuple(range(len(stages))), options.offgrid)
    return W, ~state.pruned


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


@partial(jax.jit, static_argnames=("spec", "pipeline", "calibration", "options"))
def _grid_one(spec, pipeline, calibration, options, W0, Xc, Xe, keys, params):
    """M (at the output, layer-wise) of one pipeline over the grid: ``params`` (n_settings, n_stages)."""

    def run(prm):
        W, _ = compress(spec, W0, Xc, pipeline, tuple(prm[i] for i in range(len(pipeline))), keys, calibration,
                        options)
        return _metrics(spec, W0, W, Xc, Xe)

    return jax.vmap(run)(params)


def _grid(spec, prune, quant, calibration, W0, Xc, Xe, key, ratios, bits, options=None):
    """M of the four pipelines of :data:`sim.pipeline.PAIR_PIPELINES`: P alone per ratio (1, R), Q alone per bit
    width (B, 1), P→Q and Q→P per (bits, ratio) (B, R), at the output and layer-wise. Shared keys: a method uses
    the same randomness in every order. One jitted program per pipeline: a single program holding the four
    independent pipelines was seen to hang XLA's CPU runtime (all threads idle, the result never ready)."""
    options = DEFAULT if options is None else options
    mkeys = jax.random.split(key)
    R, B = jnp.asarray(ratios, jnp.float64), jnp.asarray(bits, jnp.float64)
    r, b = jnp.meshgrid(R, B, indexing="xy")
    grid = {pl.P_ID: r.ravel(), pl.Q_ID: b.ravel()}  # bits-major: index = bi * R + ri
    alone = {pl.P_ID: (R[:, None], (1, len(ratios))), pl.Q_ID: (B[:, None], (len(bits), 1))}
    methods = (pl.canonical(prune), pl.canonical(quant))
    out = {}
    for name, ids in pl.PAIR_PIPELINES:
        if len(ids) == 1:
            params, shape = alone[ids[0]]
        else:
            params, shape = jnp.stack([grid[i] for i in ids], 1), (len(bits), len(ratios))
        m_out, m_lw = jax.device_get(_grid_one(spec, tuple(methods[i] for i in ids), calibration, options, W0, Xc,
                                               Xe, jnp.stack([mkeys[i] for i in ids]), params))
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


VIEWS = ("output", "layerwise")


def chain_tasks(spec, prune, quant, ratios, bits, seeds, calibration) -> list[Task]:
    """Per seed and view: P alone per ratio, Q alone per bit width, both orders per (bits, ratio)."""
    tasks = []
    for seed in seeds:
        for view in VIEWS:
            prov = provenance(spec, calibration, view, int(seed))
            tasks += [Task(prov, (prune.replace(ratio=r),)) for r in ratios]
            tasks += [Task(prov, (quant.replace(bits=b),)) for b in bits]
            for b in bits:
                for r in ratios:
                    P, Q = prune.replace(ratio=r), quant.replace(bits=b)
                    tasks += [Task(prov, (P, Q)), Task(prov, (Q, P))]
    return tasks


_ROLE = {"P": "P", "Q": "Q", "P->Q": "PQ", "Q->P": "QP"}


def compute_seed(spec: ChainSpec, prune, quant, calibration, tasks: list[Task]) -> list[Record]:
    """The records of one seed's tasks (both views) from one run of the four pipelines; ratios and bits are read
    from the tasks."""
    seed = tasks[0].provenance.seed
    coords = [grid_coords(t.pipeline) for t in tasks]
    ratios = sorted({r for r, _ in coords if r is not None})
    bits = sorted({b for _, b in coords if b is not None})
    W0, Xc, Xe = spec.make(seed)
    res = _grid(spec, prune, quant, calibration, W0, Xc, Xe, jax.random.PRNGKey(seed), ratios, bits)
    out = []
    for t, (r, b) in zip(tasks, coords, strict=True):
        vi = VIEWS.index(t.provenance.settings["view"])
        name = _ROLE[grid_role(t.pipeline)]
        bi = 0 if name == "P" else bits.index(b)
        ri = 0 if name == "Q" else ratios.index(r)
        out.append(Record(t.provenance, t.pipeline, float(np.asarray(res[name][vi])[bi, ri])))
    return out


def run_chain_grid(spec: ChainSpec, prune: Prune, quant: Quantize, ratios, bits, seeds, calibration="sequential",
                   store: Store | None = None, progress: bool = True) -> list[Record]:
    """Records of the grid (each method alone, both orders) at the chain's output and in the layer-wise view.

    The tasks go through ``pih.run_sweep`` (one group per seed): with a ``store``, each finished seed is stored at
    once and a rerun computes only seeds with missing records.
    """
    if calibration not in CALIBRATION:
        raise bad("calibration", calibration, f"must be one of {CALIBRATION}")
    if not isinstance(prune, Prune) or prune.structure not in ("unstructured", "nm") and prune.nm is None:
        raise bad("prune", prune, "chains take unstructured or N:M pih.Prune specs")
    if not isinstance(quant, Quantize):
        raise bad("quant", quant, "must be a pih.Quantize spec")
    if quant.rotation:
        raise bad("quant.rotation", quant.rotation, "rotation is not modelled in chains")
    pl.stage_from_spec(prune)
    pl.stage_from_spec(quant)
    ratios = [float(r) for r in ratios]
    bits = [int(b) for b in bits]
    for r in ratios:
        prune.replace(ratio=r)
    for b in bits:
        quant.replace(bits=b)
    tasks = chain_tasks(spec, prune, quant, ratios, bits, seeds, calibration)
    compute = partial(compute_seed, spec, prune, quant, calibration)
    desc = f"chain {prune.criterion} x {quant.label}"
    if store is not None:
        return run_sweep(store, tasks, compute_group=compute, group_by=lambda t: t.provenance.seed,
                         progress=progress, desc=desc)
    groups: dict[int, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.provenance.seed, []).append(t)
    return [r for g in tqdm(list(groups.values()), desc=desc, file=sys.stderr, disable=not progress, leave=False)
            for r in compute(g)]
