"""Grids of (pruning ratio, bit width, seed) for a (pruning, quantization) pairing, under an assumption set.

One grid path: :func:`grid_tasks` makes the core's ``pih.Task`` of every record (each method alone at each of its
settings, both orders at every (ratio, bits); the point is empty: ratio, bits and order are read from the
pipeline), ``pih.run_sweep`` computes the missing ones, one compiled call per seed (:func:`compute_seeds`:
``lax.map`` over bit widths and ``vmap`` over ratios inside; one seed per local device when there are several;
anything that does not depend on a setting is computed once by the batching rules), and ``pih.analyze_grid`` gives
the CER, the gap C*_P − C_Q, the censoring and A(Q→P) from the records. :class:`Grid` lays them out as arrays for
reports and plots.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pih.analysis import GridAnalysis, analyze_grid
from pih.errors import bad
from pih.methods import Prune, Quantize
from pih.metrics import ratio_16_over_b
from pih.ownership import theorem1
from pih.records import Provenance, Record, Store, Task, grid_coords, grid_role, run_sweep
from pih.validate import check_bits

from . import pipeline as pl
from .assumptions import A1, AssumptionSet
from .kernels import DEFAULT, SimOptions
from .tensors import Model, make_model


@dataclass(frozen=True)
class Pairing:
    """A pruning method and a quantizer (core specs; their ratio/bits are replaced by the grid's) and the
    simulation-only options (:class:`sim.kernels.SimOptions`, or a dict of its fields)."""

    name: str
    prune: Prune
    quant: Quantize
    options: SimOptions = field(default_factory=SimOptions)

    def __post_init__(self) -> None:
        if not isinstance(self.prune, Prune):
            raise bad("prune", self.prune, "a pairing's pruner is a pih.Prune spec")
        if not isinstance(self.quant, Quantize):
            raise bad("quant", self.quant, "a pairing's quantizer is a pih.Quantize spec (mixed precision: the "
                      "mixed-precision preset)")
        object.__setattr__(self, "options", SimOptions.of(self.options))

    def under(self, assumptions: AssumptionSet) -> tuple[Prune, Quantize, SimOptions]:
        """(pruner, quantizer, options) as the assumption set says the methods behave."""
        return assumptions.adapt(self.prune), assumptions.adapt(self.quant), assumptions.adapt_options(self.options)

    @property
    def rotation(self):
        return self.quant.rotation

    def to_dict(self) -> dict:
        return {"name": self.name, "prune": self.prune.to_dict(), "quant": self.quant.to_dict(),
                "options": self.options.to_dict()}


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


@partial(jax.jit, static_argnames=("prune", "quant", "options"))
def grid_one_seed(W, X, key, lam, ratios, bits, prune, quant, options=DEFAULT):
    """PairResult with leading axes (len(bits), len(ratios)) for one model (``prune``, ``quant``: canonical
    specs, :func:`sim.pipeline.canonical`)."""
    m = Model(W, X)

    def point(p, b):
        return pl.run_pair(m, prune, quant, p, b, key, lam, options)

    # bit widths one after another (lax.map), ratios batched (vmap): a vmap over both axes keeps every bit width's
    # buffers alive at once (7x the working set); its speed depends on the machine (512x512 layers: 2.5-3x slower
    # per seed on an AVX-512 machine, about 7 % faster on an AVX2 one; experiments/measured/bench_sim_cpu.md); what
    # does not depend on the bit width is hoisted out of the loop by XLA
    return jax.lax.map(lambda b: jax.vmap(lambda p: point(p, b))(ratios), bits)


@lru_cache(maxsize=32)
def _grid_pmap(prune, quant, options):
    """The per-seed grid, one seed per local device (``XLA_FLAGS=--xla_force_host_platform_device_count=N``
    makes N CPU devices: seeds then run on separate cores)."""

    def one(W, X, key, lam, ratios, bits):
        return grid_one_seed.__wrapped__(W, X, key, lam, ratios, bits, prune, quant, options)

    return jax.pmap(one, in_axes=(0, 0, 0, 0, None, None))


def provenance(pairing: Pairing, assumptions: AssumptionSet, model: ModelSpec, seed: int,
               options: SimOptions) -> Provenance:
    return Provenance(backend="sim", model=model.label, data="synthetic", metric=f"M[{assumptions.name}]",
                      calibration=f"synthetic activations sigma={model.act_sigma} outliers={model.act_outliers}",
                      calibration_size=model.n_samples, seed=seed,
                      settings={"model": model.to_dict(), "assumptions": assumptions.to_dict(),
                                "pairing": pairing.name, "options": options.to_dict()})


@dataclass(frozen=True)
class GridConfig:
    """Everything a grid's records depend on besides their tasks: what :func:`compute_seeds` is given."""

    pairing: Pairing
    assumptions: AssumptionSet
    model: ModelSpec
    prune: Prune  # the pairing's pruner under the assumption set (its ratio replaced by each task's)
    quant: Quantize
    options: SimOptions

    def P(self, r) -> Prune:
        return self.prune if self.prune.nm else self.prune.replace(ratio=float(r))

    def Q(self, b) -> Quantize:
        return self.quant.replace(bits=int(b))


def grid_tasks(cfg: GridConfig, ratios, bits, seeds) -> list[Task]:
    """Per seed: P alone per ratio, Q alone per bit width, both orders per (bits, ratio)."""
    tasks = []
    for seed in seeds:
        prov = provenance(cfg.pairing, cfg.assumptions, cfg.model, int(seed), cfg.options)
        tasks += [Task(prov, (cfg.P(r),)) for r in ratios]
        tasks += [Task(prov, (cfg.Q(b),)) for b in bits]
        for b in bits:
            for r in ratios:
                tasks += [Task(prov, (cfg.P(r), cfg.Q(b))), Task(prov, (cfg.Q(b), cfg.P(r)))]
    return tasks


def _metric(a: AssumptionSet, we, eo, arr, lam):
    return a.metric(we, eo, arr["dense_output"], arr["removal_weight"], lam)


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


def _point_record(cfg: GridConfig, task: Task, arr: dict, lam, ri: dict, bi: dict) -> Record:
    """The record of one task from its seed's measured arrays (leading axes: bits, ratios)."""
    a, (r, b), role = cfg.assumptions, grid_coords(task.pipeline), grid_role(task.pipeline)

    def at(i, j):
        return {k: v[i, j] for k, v in arr.items()}

    if role == "P":
        x = at(0, ri[r])
        return Record(task.provenance, task.pipeline, _metric(a, x["p_weight"], x["p_output"], x, lam))
    if role == "Q":
        x = at(bi[b], 0)
        return Record(task.provenance, task.pipeline, _metric(a, x["q_weight"], x["q_output"], x, lam))
    x = at(bi[b], ri[r])
    m_pf = _metric(a, x["pf_weight"], x["pf_output"], x, lam)
    m_qf = _metric(a, x["qf_weight"], x["qf_output"], x, lam)
    extras = {"n_changed_rows": int((x["pf_row_owner"] != x["qf_row_owner"]).sum()),
              "free_zeros_q_first": int(x["qf_free_zeros"]),
              "delta_pf": _metric(a, x["pf_disjoint_weight"], x["pf_disjoint_output"], x, lam) - m_pf,
              "delta_qf": _metric(a, x["qf_disjoint_weight"], x["qf_disjoint_output"], x, lam) - m_qf,
              "t1_residual": (m_qf - m_pf) - t1_rows(a, x, lam)}
    if role == "P->Q":
        arrays = {k: x[k] for k in ("pf_output", "qf_output", "pf_weight", "qf_weight", "pf_row_owner",
                                    "qf_row_owner")}
        return Record(task.provenance, task.pipeline, m_pf, extras=extras, arrays=arrays)
    return Record(task.provenance, task.pipeline, m_qf, extras=extras)


def compute_seeds(cfg: GridConfig, tasks: list[Task]) -> list[Record]:
    """The records of ``tasks`` (a whole number of seeds): one compiled call per seed (one seed per local device
    when there are several), then each task's record from its own pipeline's errors. A pure function of its
    tasks: ratios, bits and seeds are read from them."""
    coords = [grid_coords(t.pipeline) for t in tasks]
    ratios = sorted({r for r, _ in coords if r is not None})
    bits = sorted({b for _, b in coords if b is not None})
    seeds = sorted({t.provenance.seed for t in tasks})
    prune, quant = pl.canonical(cfg.prune), pl.canonical(cfg.quant)
    models = {s: cfg.model.make(s) for s in seeds}
    lams = {s: np.asarray(cfg.assumptions.sensitivity(tuple(models[s].W.shape[:2]), s), dtype=float) for s in seeds}
    R, B = jnp.asarray(ratios, jnp.float64), jnp.asarray(bits, jnp.float64)
    if jax.local_device_count() > 1 and len(seeds) > 1:
        f = _grid_pmap(prune, quant, cfg.options)
        res = f(jnp.stack([models[s].W for s in seeds]), jnp.stack([models[s].X for s in seeds]),
                jnp.stack([jax.random.PRNGKey(s) for s in seeds]), jnp.asarray(np.stack([lams[s] for s in seeds])),
                R, B)
        arrs = {s: {k: np.asarray(v[j]) for k, v in res._asdict().items()} for j, s in enumerate(seeds)}
    else:
        arrs = {}
        for s in seeds:
            res = grid_one_seed(models[s].W, models[s].X, jax.random.PRNGKey(s), jnp.asarray(lams[s]), R, B,
                                prune=prune, quant=quant, options=cfg.options)
            arrs[s] = {k: np.asarray(v) for k, v in res._asdict().items()}
    ri = {r: i for i, r in enumerate(ratios)}
    bi = {b: i for i, b in enumerate(bits)}
    return [_point_record(cfg, t, arrs[t.provenance.seed], lams[t.provenance.seed], ri, bi) for t in tasks]


@dataclass
class Grid:
    """A measured grid for one pairing, as arrays over (seed S, bits B, ratio R), from its records and their
    analysis (``pih.analyze_grid``: the CER, the gap, the censoring and A(Q→P) are its)."""

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
    A: np.ndarray  # (S, B, R)  A(Q→P) = M(P∘Q) − M(Q∘P) (positive: quantizing first is better)
    x: np.ndarray  # (S, B, R)  C*_P − C_Q; NaN where C*_P is censored
    cer_P: np.ndarray  # (S, R)  NaN where censored
    censored: np.ndarray  # (S, R) str: '' | weaker | stronger | no-curve
    curve_monotone: np.ndarray  # (S,)
    n_changed: np.ndarray  # (S, B, R) rows whose owner differs between orders
    free_zeros_qf: np.ndarray  # (S, B, R) pruned weights that the quantizer had already set to zero
    delta_pf: np.ndarray  # (S, B, R) interference of P first: M(disjoint reconstruction) − M(actual)
    delta_qf: np.ndarray  # (S, B, R) the same for Q first
    t1_residual: np.ndarray  # (S, B, R) A(Q→P) measured − Theorem 1 over row units (A1 linear terms)
    analysis: GridAnalysis | None = field(default=None, repr=False)
    records: list = field(default_factory=list, repr=False)

    def points(self) -> dict[str, np.ndarray]:
        """Flat arrays over (seed, bits, ratio) of x, A and the settings, uncensored points only."""
        S, B, R = self.M_pf.shape
        s, b, r = np.meshgrid(self.seeds, self.bits, self.ratios, indexing="ij")
        ok = np.isfinite(self.x)
        return {"seed": s[ok], "bits": b[ok], "ratio": r[ok], "x": self.x[ok], "A": self.A[ok],
                "n_censored": int((~ok).sum()), "n_total": int(S * B * R)}


def grid_from_records(pairing: Pairing, assumptions: AssumptionSet, model: ModelSpec, records: list[Record],
                      convention=ratio_16_over_b, isotonic: bool = False, n_boot: int = 500) -> Grid:
    """Lay out a grid's records as arrays; A, the CER, the gap and the censoring from ``pih.analyze_grid``."""
    seeds = sorted({r.provenance.seed for r in records})
    ratios = sorted({r.coords[0] for r in records if r.coords[0] is not None})
    bits = sorted({r.coords[1] for r in records if r.coords[1] is not None})
    si, ri, bi = ({v: i for i, v in enumerate(x)} for x in (seeds, ratios, bits))
    S, B, R = len(seeds), len(bits), len(ratios)
    a = {k: np.full(sh, np.nan) for k, sh in (("M_P", (S, R)), ("M_Q", (S, B)), ("M_pf", (S, B, R)),
                                               ("M_qf", (S, B, R)), ("A", (S, B, R)), ("x", (S, B, R)),
                                               ("cer_P", (S, R)), ("delta_pf", (S, B, R)), ("delta_qf", (S, B, R)),
                                               ("t1_residual", (S, B, R)))}
    n_changed, free = np.zeros((S, B, R), int), np.zeros((S, B, R), int)
    censored = np.full((S, R), "", dtype=object)
    for rec in records:
        s, (r, b) = si[rec.provenance.seed], rec.coords
        role = rec.role
        if role == "P":
            a["M_P"][s, ri[r]] = rec.value
        elif role == "Q":
            a["M_Q"][s, bi[b]] = rec.value
        elif role in ("P->Q", "Q->P"):
            a["M_pf" if role == "P->Q" else "M_qf"][s, bi[b], ri[r]] = rec.value
            if role == "P->Q":
                n_changed[s, bi[b], ri[r]] = rec.extras.get("n_changed_rows", 0)
                free[s, bi[b], ri[r]] = rec.extras.get("free_zeros_q_first", 0)
                for k in ("delta_pf", "delta_qf", "t1_residual"):
                    a[k][s, bi[b], ri[r]] = rec.extras.get(k, np.nan)
    an = analyze_grid(records, ratio=convention, isotonic=isotonic, n_boot=n_boot, seed=0, cluster_by="seed")
    for row in an.rows:
        s, b, r = si[row.seed], bi[row.quant.bits], ri[row.prune.ratio]
        a["A"][s, b, r] = row.advantage_qp
        a["x"][s, b, r] = np.nan if row.gap is None else row.gap
        a["cer_P"][s, r] = np.nan if row.cer_prune is None else row.cer_prune
        censored[s, r] = row.cer_censored or ""
    mono = np.array([all(c["monotone"] for k, c in an.curves.items() if k.startswith(f"seed={sd} "))
                     for sd in seeds], dtype=bool)
    return Grid(pairing, assumptions, model, np.asarray(seeds), np.asarray(ratios, float), np.asarray(bits, float),
                a["M_P"], a["M_Q"], a["M_pf"], a["M_qf"], a["A"], a["x"], a["cer_P"], censored, mono, n_changed, free,
                a["delta_pf"], a["delta_qf"], a["t1_residual"], an, records)


def run_grid(pairing: Pairing, ratios, bits, seeds, model: ModelSpec = ModelSpec(),
             assumptions: AssumptionSet = A1, store: Store | None = None, progress: bool = True,
             convention=ratio_16_over_b, isotonic: bool = False, n_boot: int = 500) -> Grid:
    """Measure the grid: its tasks through ``pih.run_sweep`` (with a ``store``, each finished group of seeds is
    stored at once and a rerun computes only groups with missing records), then :func:`grid_from_records`."""
    ratios = [float(r) for r in np.asarray(ratios, dtype=float)]
    bits = [int(b) for b in np.asarray(bits)]
    seeds = [int(s) for s in np.asarray(seeds, dtype=int)]
    if pairing.prune.nm:
        if any(abs(r - pairing.prune.ratio) > 1e-9 for r in ratios):
            raise bad("ratios", ratios, f"{pairing.prune.structure} implies ratio {pairing.prune.ratio:g}")
        ratios = [pairing.prune.ratio]
    for r in ratios:
        pairing.prune.replace(ratio=r)
    for b in bits:
        pairing.quant.replace(bits=b)
    check_bits("bits", bits, pairing.quant.symmetric)  # pih.validate: shared rules
    if len(bits) < 2:
        raise bad("bits", bits, "the CER needs the quantizer at two or more bit widths")
    prune, quant, options = pairing.under(assumptions)
    pl.stage_from_spec(prune)
    pl.stage_from_spec(quant.replace(bits=bits[0]))
    pl.check_options((prune, quant), options)
    cfg = GridConfig(pairing, assumptions, model, prune, quant, options)
    tasks = grid_tasks(cfg, ratios, bits, seeds)
    chunk = max(1, jax.local_device_count())
    pos = {s: i // chunk for i, s in enumerate(seeds)}

    def group_by(t: Task) -> int:
        return pos[t.provenance.seed]

    compute = partial(compute_seeds, cfg)
    desc = f"sim {pairing.name}"
    if store is not None:
        records = run_sweep(store, tasks, compute_group=compute, group_by=group_by, progress=progress, desc=desc)
    else:
        groups: dict[int, list[Task]] = {}
        for t in tasks:
            groups.setdefault(group_by(t), []).append(t)
        records = [r for g in tqdm(list(groups.values()), desc=desc, file=sys.stderr, disable=not progress)
                   for r in compute(g)]
    return grid_from_records(pairing, assumptions, model, records, convention, isotonic, n_boot)
