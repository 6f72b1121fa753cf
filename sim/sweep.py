"""Grids of (pruning ratio, bit width, seed) for a (pruning, quantization) pairing, under an assumption set.

The work per seed is one jitted call: ``lax.map`` over seeds (one at a time, bounded memory), ``vmap`` over
bit widths and ratios inside (anything that does not depend on a setting, such as the ranking of the original
weights or of the quantized weights, is computed once by the batching rules). Performance, CER and A(Q→P) are
computed afterwards in numpy from the measured per-unit errors, by the assumption set and the core's metrics.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pih.errors import bad
from pih.methods import MixedPrecision, Prune, Quantize
from pih.metrics import QuantCurve, ratio_16_over_b
from pih.ownership import theorem1
from pih.records import Provenance, Record, Store
from pih.validate import check_bits

from . import pipeline as pl
from .assumptions import A1, AssumptionSet
from .tensors import Model, make_model


@dataclass(frozen=True)
class Pairing:
    """A pruning method and a quantization method (core specs; their ratio/bits are replaced by the grid), and
    simulation-only options: per (ranking scope), reference (pruner's reference model), after_quant (SparseGPT
    after a quantizer), rotation_scope (model | quantizer)."""

    name: str
    prune: Prune
    quant: Quantize | MixedPrecision
    options: dict = field(default_factory=dict)

    def stages(self, assumptions: AssumptionSet = A1):
        ps, _ = pl.stage_from_spec(self.prune)
        qs, _ = pl.stage_from_spec(self.quant)
        o = dict(self.options)
        known = {"per", "reference", "after_quant", "rotation_scope"}
        if set(o) - known:
            raise bad("options", sorted(set(o) - known), f"unknown simulation options; allowed: {sorted(known)}")
        ps = ps.__class__(**{**ps.__dict__, **{k: v for k, v in o.items() if k in ("per", "reference",
                                                                                 "after_quant")}})
        return assumptions.adapt(ps), assumptions.adapt(qs)

    @property
    def rotation(self):
        return getattr(self.quant, "rotation", None)

    @property
    def rotation_scope(self) -> str:
        return self.options.get("rotation_scope", "model")

    def to_dict(self) -> dict:
        return {"name": self.name, "prune": self.prune.to_dict(), "quant": self.quant.to_dict(),
                "options": dict(self.options)}


@dataclass(frozen=True)
class ModelSpec:
    """How a seed's model is generated (see :func:`sim.tensors.make_model`)."""

    n_layers: int = 1
    shape: tuple[int, int] = (64, 64)
    n_samples: int = 128
    dist: str = "gaussian"
    nu: float = 4.0
    outlier_channels: int = 0
    act_sigma: float = 1.0
    act_outliers: int = 0
    layer_scales: bool = False

    def make(self, seed: int) -> Model:
        return make_model(seed, self.n_layers, tuple(self.shape), self.n_samples, self.dist, self.nu,
                          self.outlier_channels, self.act_sigma, self.act_outliers, self.layer_scales)

    @property
    def label(self) -> str:
        L, (o, i) = self.n_layers, self.shape
        d = f"t{self.nu:g}" if self.dist == "student_t" else self.dist
        return f"{d}-{L}x{o}x{i}" + (f"-wout{self.outlier_channels}" if self.outlier_channels else "")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@partial(jax.jit, static_argnames=("pstage", "qstage", "rotation", "rotation_scope"))
def grid_one_seed(W, X, key, lam, ratios, bits, pstage, qstage, rotation=None, rotation_scope="model"):
    """PairResult with leading axes (len(bits), len(ratios)) for one model."""
    m = Model(W, X)

    def point(p, b):
        return pl.run_pair(m, pstage, qstage, p, b, key, lam, rotation, rotation_scope)

    return jax.vmap(lambda b: jax.vmap(lambda p: point(p, b))(ratios))(bits)


@lru_cache(maxsize=32)
def _grid_pmap(pstage, qstage, rotation, rotation_scope):
    """The per-seed grid, one seed per local device (``XLA_FLAGS=--xla_force_host_platform_device_count=N``
    makes N CPU devices: seeds then run on separate cores)."""

    def one(W, X, key, lam, ratios, bits):
        return grid_one_seed.__wrapped__(W, X, key, lam, ratios, bits, pstage, qstage, rotation, rotation_scope)

    return jax.pmap(one, in_axes=(0, 0, 0, 0, None, None))


@dataclass
class Grid:
    """Measured grid for one pairing: per (seed, bits, ratio) metrics and the derived CER and A(Q→P)."""

    pairing: Pairing
    assumptions: AssumptionSet
    model: ModelSpec
    seeds: np.ndarray
    ratios: np.ndarray
    bits: np.ndarray
    M_P: np.ndarray  # (S, R)
    M_Q: np.ndarray  # (S, B)
    M_pf: np.ndarray  # (S, B, R)  P first, Q∘P
    M_qf: np.ndarray  # (S, B, R)  Q first, P∘Q
    cer_P: np.ndarray  # (S, R)  NaN where censored
    censored: np.ndarray  # (S, R) str: '' | weaker | stronger
    curve_monotone: np.ndarray  # (S,)
    n_changed: np.ndarray  # (S, B, R) rows whose owner differs between orders
    free_zeros_qf: np.ndarray  # (S, B, R) pruned weights that the quantizer had already set to zero
    delta_pf: np.ndarray  # (S, B, R) interference of P first: M(disjoint reconstruction) − M(actual)
    delta_qf: np.ndarray  # (S, B, R) the same for Q first
    t1_residual: np.ndarray  # (S, B, R) A(Q→P) measured − Theorem 1 over row units (A1 linear terms)
    arrays: list = field(default_factory=list, repr=False)  # per seed: dict of numpy row-level arrays

    @property
    def A(self) -> np.ndarray:
        """A(Q→P) = M(P∘Q) − M(Q∘P) (positive: quantizing first is better)."""
        return self.M_qf - self.M_pf

    @property
    def x(self) -> np.ndarray:
        """C*_P − C_Q per (S, B, R); NaN where C*_P is censored."""
        cq = np.asarray(ratio_16_over_b(self.bits), dtype=float)
        return self.cer_P[:, None, :] - cq[None, :, None]

    def points(self) -> dict[str, np.ndarray]:
        """Flat arrays over (seed, bits, ratio) of x, A and the settings, uncensored points only."""
        S, B, R = self.M_pf.shape
        s, b, r = np.meshgrid(self.seeds, self.bits, self.ratios, indexing="ij")
        x = self.x
        ok = np.isfinite(x)
        return {"seed": s[ok], "bits": b[ok], "ratio": r[ok], "x": x[ok], "A": self.A[ok],
                "n_censored": int((~ok).sum()), "n_total": int(S * B * R)}


def _metric(a: AssumptionSet, we, eo, arr, lam):
    return a.metric(we, eo, arr["dense_output"], arr["removal_weight"], lam)


def run_grid(pairing: Pairing, ratios, bits, seeds, model: ModelSpec = ModelSpec(),
             assumptions: AssumptionSet = A1, store: Store | None = None, progress: bool = True,
             convention=ratio_16_over_b, isotonic: bool = False, keep_arrays: bool = False) -> Grid:
    """Measure the grid seed by seed; with a ``store``, each finished seed's records are appended at once and a
    rerun recomputes only seeds whose records are missing (their values are read back)."""
    ratios = np.asarray(ratios, dtype=float)
    bits = np.asarray(bits, dtype=float)
    seeds = np.asarray(seeds, dtype=int)
    for r in ratios:
        pairing.prune.replace(ratio=float(r)) if not pairing.prune.nm else None
    check_bits("bits", bits.tolist(), getattr(pairing.quant, "symmetric", True))  # pih.validate: shared rules
    if len(bits) < 2:
        raise bad("bits", bits.tolist(), "the CER needs the quantizer at two or more bit widths")
    pstage, qstage = pairing.stages(assumptions)
    S, B, R = len(seeds), len(bits), len(ratios)
    out = {k: np.full(sh, np.nan) for k, sh in
           (("M_P", (S, R)), ("M_Q", (S, B)), ("M_pf", (S, B, R)), ("M_qf", (S, B, R)))}
    n_changed = np.zeros((S, B, R), int)
    free = np.zeros((S, B, R), int)
    extra = {k: np.full((S, B, R), np.nan) for k in ("delta_pf", "delta_qf", "t1_residual")}
    arrays = []
    stored = {d["key"]: d for d in store.raw()} if store is not None else {}  # read the store once
    n_dev = jax.local_device_count()
    pending: dict[int, tuple] = {}

    def compute(todo: list[int]) -> None:
        """Measure the seeds ``todo`` (indices into ``seeds``), one per device when there are several."""
        ms_ = [model.make(int(seeds[si])) for si in todo]
        lams = [np.asarray(assumptions.sensitivity(tuple(m.W.shape[:2]), int(seeds[si])), dtype=float)
                for m, si in zip(ms_, todo, strict=True)]
        keys = [jax.random.PRNGKey(int(seeds[si])) for si in todo]
        if n_dev > 1 and len(todo) > 1:
            f = _grid_pmap(pstage, qstage, pairing.rotation, pairing.rotation_scope)
            res = f(jnp.stack([m.W for m in ms_]), jnp.stack([m.X for m in ms_]), jnp.stack(keys),
                    jnp.asarray(np.stack(lams)), jnp.asarray(ratios), jnp.asarray(bits))
            for j, si in enumerate(todo):
                pending[si] = ({k: np.asarray(v[j]) for k, v in res._asdict().items()}, lams[j])
        else:
            for m, lam, key, si in zip(ms_, lams, keys, todo, strict=True):
                res = grid_one_seed(m.W, m.X, key, jnp.asarray(lam), jnp.asarray(ratios), jnp.asarray(bits),
                                    pstage=pstage, qstage=qstage, rotation=pairing.rotation,
                                    rotation_scope=pairing.rotation_scope)
                pending[si] = ({k: np.asarray(v) for k, v in res._asdict().items()}, lam)

    for si, seed in enumerate(tqdm(seeds, desc=f"sim {pairing.name}", file=sys.stderr, disable=not progress)):
        recs = None
        if store is not None:
            recs = _seed_records(pairing, assumptions, model, int(seed), ratios, bits)
            if all(r.key in stored for r in recs):
                vals = {r.key: Record.from_dict(stored[r.key]) for r in recs}
                _fill_from_records(out, n_changed, free, si, recs, vals, extra)
                continue
        if si not in pending:
            chunk = [sj for sj in range(si, min(si + n_dev, S))
                     if store is None or not all(r.key in stored for r in
                                                 _seed_records(pairing, assumptions, model, int(seeds[sj]),
                                                               ratios, bits))]
            compute(chunk or [si])
        arr, lam = pending.pop(si)
        a = assumptions
        for bi in range(B):
            out["M_Q"][si, bi] = _metric(a, arr["q_weight"][bi, 0], arr["q_output"][bi, 0], _at(arr, bi, 0), lam)
            for ri in range(R):
                at = _at(arr, bi, ri)
                if bi == 0:
                    out["M_P"][si, ri] = _metric(a, at["p_weight"], at["p_output"], at, lam)
                out["M_pf"][si, bi, ri] = _metric(a, at["pf_weight"], at["pf_output"], at, lam)
                out["M_qf"][si, bi, ri] = _metric(a, at["qf_weight"], at["qf_output"], at, lam)
                n_changed[si, bi, ri] = int((at["pf_row_owner"] != at["qf_row_owner"]).sum())
                free[si, bi, ri] = int(at["qf_free_zeros"])
                extra["delta_pf"][si, bi, ri] = (
                    _metric(a, at["pf_disjoint_weight"], at["pf_disjoint_output"], at, lam) - out["M_pf"][si, bi, ri])
                extra["delta_qf"][si, bi, ri] = (
                    _metric(a, at["qf_disjoint_weight"], at["qf_disjoint_output"], at, lam) - out["M_qf"][si, bi, ri])
                extra["t1_residual"][si, bi, ri] = (out["M_qf"][si, bi, ri] - out["M_pf"][si, bi, ri]) - t1_rows(
                    a, at, lam)
        if keep_arrays:
            arrays.append(arr)
        if store is not None:
            for rec in _seed_records(pairing, assumptions, model, int(seed), ratios, bits, out, si, n_changed,
                                     free, arr, extra):
                store.append(rec, exist_ok=True)  # a key another process stored meanwhile is left as it is
    cer = np.full((S, R), np.nan)
    cens = np.full((S, R), "", dtype=object)
    mono = np.ones(S, bool)
    for si in range(S):
        curve = QuantCurve(bits, out["M_Q"][si], ratio=convention, isotonic=isotonic)
        mono[si] = curve.monotone
        for ri in range(R):
            c = curve.cer(out["M_P"][si, ri])
            if c.censored:
                cens[si, ri] = c.censored
            else:
                cer[si, ri] = c.value
    return Grid(pairing, assumptions, model, seeds, ratios, bits, out["M_P"], out["M_Q"], out["M_pf"],
                out["M_qf"], cer, cens, mono, n_changed, free, extra["delta_pf"], extra["delta_qf"],
                extra["t1_residual"], arrays)


def t1_rows(a: AssumptionSet, at: dict, lam) -> float:
    """Theorem 1's A(Q→P) over row units, from errors of each method alone on φ and the two owner maps, in
    the units of A1's linear metric (−Σλe/Σλd). Valid as a prediction only when rows are disjointly owned."""
    kind = "output" if a.error == "output" else "weight"
    errors = np.stack([at[f"removal_{kind}"].ravel(), at[f"q_{kind}"].ravel()])
    lam = np.asarray(lam, dtype=float).ravel()
    dense = (at["dense_output"] if kind == "output" else at["removal_weight"]).ravel()
    t1 = theorem1(errors, at["qf_row_owner"].ravel().astype(np.int64), at["pf_row_owner"].ravel().astype(np.int64),
                  lam)
    return t1.advantage / float(lam @ dense)


def _at(arr, bi, ri):
    return {k: v[bi, ri] for k, v in arr.items()}


def provenance(pairing: Pairing, assumptions: AssumptionSet, model: ModelSpec, seed: int) -> Provenance:
    return Provenance(backend="sim", model=model.label, data="synthetic", metric=f"M[{assumptions.name}]",
                      calibration=f"synthetic activations sigma={model.act_sigma} outliers={model.act_outliers}",
                      calibration_size=model.n_samples, seed=seed,
                      settings={"model": model.to_dict(), "assumptions": assumptions.to_dict(),
                                "pairing": pairing.name, "options": dict(pairing.options),
                                "rotation": pairing.rotation, "rotation_scope": pairing.rotation_scope})


def _seed_records(pairing, assumptions, model, seed, ratios, bits, out=None, si=0, n_changed=None, free=None,
                  arr=None, extra=None) -> list[Record]:
    """The records of one seed: P alone per ratio, Q alone per bit width, both orders per (bits, ratio).
    Without measured values (``out`` None) the records carry a placeholder value and serve for their keys."""
    prov = provenance(pairing, assumptions, model, seed)
    recs = []

    def P(r):
        return pairing.prune if pairing.prune.nm else pairing.prune.replace(ratio=float(r))

    def Q(b):
        q = pairing.quant
        return q.replace(bits=int(b)) if isinstance(q, Quantize) else q

    def val(name, *idx):
        return 0.0 if out is None else float(out[name][(si, *idx)])

    for ri, r in enumerate(ratios):
        recs.append(Record(prov, (P(r),), val("M_P", ri), {"ratio": float(r)}))
    for bi, b in enumerate(bits):
        recs.append(Record(prov, (Q(b),), val("M_Q", bi), {"bits": float(b)}))
    for bi, b in enumerate(bits):
        for ri, r in enumerate(ratios):
            pt = {"ratio": float(r), "bits": float(b)}
            ex = {} if out is None else {"n_changed_rows": int(n_changed[si, bi, ri]),
                                         "free_zeros_q_first": int(free[si, bi, ri]),
                                         **{k: float(v[si, bi, ri]) for k, v in extra.items()}}
            arrays = None
            if arr is not None:
                at = _at(arr, bi, ri)
                arrays = {k: at[k] for k in ("pf_output", "qf_output", "pf_weight", "qf_weight", "pf_row_owner",
                                             "qf_row_owner")}
            recs.append(Record(prov, (P(r), Q(b)), val("M_pf", bi, ri), pt, ex, arrays))
            recs.append(Record(prov, (Q(b), P(r)), val("M_qf", bi, ri), pt, ex))
    return recs


def _fill_from_records(out, n_changed, free, si, recs, vals: dict[str, Any], extra) -> None:
    R = out["M_P"].shape[1]
    B = out["M_Q"].shape[1]
    it = iter(recs)
    for ri in range(R):
        out["M_P"][si, ri] = vals[next(it).key].value
    for bi in range(B):
        out["M_Q"][si, bi] = vals[next(it).key].value
    for bi in range(B):
        for ri in range(R):
            r1 = vals[next(it).key]
            out["M_pf"][si, bi, ri] = r1.value
            out["M_qf"][si, bi, ri] = vals[next(it).key].value
            n_changed[si, bi, ri] = r1.extras.get("n_changed_rows", 0)
            free[si, bi, ri] = r1.extras.get("free_zeros_q_first", 0)
            for k, v in extra.items():
                v[si, bi, ri] = r1.extras.get(k, np.nan)
