"""The same analysis for every backend: from records of a pruning × quantization grid to G, CER, A and the
monotonicity of A(Q→P) in the CER gap C*_P − C_Q.

A grid is a set of records of one protocol holding, per seed, each method alone (pipelines ``(P,)`` and ``(Q,)``)
and both orders (``(P, Q)``: prune first; ``(Q, P)``: quantize first). The reference quantization curve of a
quantizer Q is made of the records of Q alone at every bit width measured (same settings apart from bits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .errors import bad
from .methods import Prune, Quantize
from .metrics import Monotonicity, QuantCurve, monotonicity, order_advantage, performance_gap, ratio_16_over_b
from .records import Record, require_same_protocol, split_failed
from .stats import (
    NOISE_RULE,
    ONE_SEED,
    ClusterBootstrap,
    PermutationTest,
    SeedStat,
    cluster_bootstrap,
    permutation_test,
    seed_stat,
    spearman,
)


def order_advantage_of(f1_first: Record, f2_first: Record) -> float:
    """A(f1→f2) from the record of f2∘f1 (f1 applied first) and the record of f1∘f2.

    Both must come from one protocol and seed, and apply the same methods in reverse order.
    """
    require_same_protocol(f1_first, f2_first)
    if f1_first.provenance.seed != f2_first.provenance.seed:
        raise bad("f2_first", f"seed {f2_first.provenance.seed}", f"differs from seed {f1_first.provenance.seed}")
    if tuple(reversed(f1_first.pipeline)) != f2_first.pipeline:
        raise bad("f2_first", f2_first.order, f"is not the reverse of {f1_first.order}")
    return order_advantage(f1_first.value, f2_first.value)


@dataclass(frozen=True)
class GridRow:
    """One (P, Q) pair of one seed."""

    prune: Prune
    quant: Quantize
    seed: int
    m_prune: float
    m_quant: float
    m_prune_first: float
    m_quant_first: float
    cer_prune: float | None
    cer_censored: str | None  # None | "weaker" | "stronger" | "no-curve" (Q alone at < 2 bit widths)
    c_quant: float
    cer_detail: dict | None = field(default=None, compare=False)  # the full CER (bound, crossings, ...)

    @property
    def advantage_qp(self) -> float:
        """A(Q→P) = M(P∘Q) − M(Q∘P): positive when quantizing first is better."""
        return order_advantage(self.m_quant_first, self.m_prune_first)

    @property
    def gap(self) -> float | None:
        """C*_P − C_Q (None when the CER of P is censored)."""
        return None if self.cer_prune is None else self.cer_prune - self.c_quant

    @property
    def g(self) -> float:
        """G(Q, P) = M(Q alone) − M(P alone): positive when P is the stronger perturbation."""
        return performance_gap(self.m_quant, self.m_prune)

    def to_dict(self) -> dict:
        return {
            "prune": self.prune.label,
            "quant": self.quant.label,
            "ratio": self.prune.ratio,
            "bits": self.quant.bits,
            "seed": self.seed,
            "m_prune": self.m_prune,
            "m_quant": self.m_quant,
            "m_prune_first": self.m_prune_first,
            "m_quant_first": self.m_quant_first,
            "cer_prune": self.cer_prune,
            "cer_censored": self.cer_censored,
            "c_quant": self.c_quant,
            "gap": self.gap,
            "G": self.g,
            "A_qp": self.advantage_qp,
        }


@dataclass(frozen=True)
class GridPoint:
    """One (P, Q) point over the calibration seeds of a grid."""

    prune: Prune
    quant: Quantize
    A: SeedStat  # A(Q→P) per seed
    m_prune_first: SeedStat
    m_quant_first: SeedStat
    gap: float | None  # mean C*_P − C_Q over seeds; None unless the CER is uncensored at every seed
    censored: str | None  # None, or why the gap is missing ("weaker", "stronger", "no-curve", "mixed")
    t20_bound: SeedStat | None = None  # M(P alone) − M(Q∘P): T2.0's bound on A(Q→P) in A1 + DS models

    @property
    def exceeds_t20_bound(self) -> bool:
        """A(Q→P) above T2.0's bound by more than the noise floor of their difference: the measured model is
        not an A1 + DS model at this point (proofs/t2_monotonicity.md, T2.0)."""
        if self.t20_bound is None:
            return False
        d = seed_stat([a - b for a, b in zip(self.A.values, self.t20_bound.values, strict=True)])
        return d.mean > (d.floor if d.floor is not None else 0.0)

    def to_dict(self) -> dict:
        return {"prune": self.prune.label, "quant": self.quant.label, "ratio": self.prune.ratio,
                "bits": self.quant.bits, "A_qp": self.A.to_dict(), "m_prune_first": self.m_prune_first.to_dict(),
                "m_quant_first": self.m_quant_first.to_dict(), "gap": self.gap, "censored": self.censored,
                "t20_bound": self.t20_bound.to_dict() if self.t20_bound else None,
                "exceeds_t20_bound": self.exceeds_t20_bound}


@dataclass(frozen=True)
class LineTest:
    """Monotonicity of mean A(Q→P) in C*_P − C_Q along one line of the grid (uncensored points only)."""

    along: str  # "bits" (the pruning setting fixed) or "prune" (the bit width fixed)
    fixed: str  # label of the fixed method
    gaps: tuple[float, ...]
    means: tuple[float, ...]
    n_above: int | None  # points of the line above their noise floor (None with one seed)
    test: PermutationTest | None  # None with fewer than 3 uncensored points

    def to_dict(self) -> dict:
        return {"along": self.along, "fixed": self.fixed, "gaps": list(self.gaps), "A_means": list(self.means),
                "n_points": len(self.gaps), "n_above_floor": self.n_above,
                "test": self.test.to_dict() if self.test else None}


@dataclass(frozen=True)
class SeedSummary:
    """A grid over its calibration seeds: per-point mean, spread and noise floor of A(Q→P), the sign counts above
    the floor, per-line permutation tests and the pooled ρ with a cluster bootstrap over the fixed-p lines."""

    seeds: tuple[int, ...]
    points: list[GridPoint]
    lines: list[LineTest]
    pooled: ClusterBootstrap | None  # ρ over the uncensored point means; resampled: whole fixed-p lines
    pooled_by_seed: dict[int, float]  # the same ρ computed on each seed's own A values

    @property
    def has_floor(self) -> bool:
        return len(self.seeds) > 1

    def counts(self) -> dict:
        above = [p for p in self.points if p.A.above]
        return {"n_points": len(self.points),
                "n_above_floor": len(above) if self.has_floor else None,
                "n_below_floor": (len(self.points) - len(above)) if self.has_floor else None,
                "n_quantize_first_wins_above_floor": sum(p.A.mean > 0 for p in above) if self.has_floor else None,
                "n_prune_first_wins_above_floor": sum(p.A.mean < 0 for p in above) if self.has_floor else None,
                "n_censored": sum(p.gap is None for p in self.points),
                "n_exceeding_t20_bound": sum(p.exceeds_t20_bound for p in self.points)}

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "noise_rule": NOISE_RULE if self.has_floor else ONE_SEED,
                **self.counts(), "points": [p.to_dict() for p in self.points],
                "lines": [ln.to_dict() for ln in self.lines],
                "pooled": self.pooled.to_dict() if self.pooled else None,
                "pooled_by_seed": {str(k): v for k, v in self.pooled_by_seed.items()}}


@dataclass(frozen=True)
class GridAnalysis:
    protocol: str
    rows: list[GridRow]
    stats: Monotonicity | None
    n_censored: int
    curves: dict[str, dict] = field(default_factory=dict)
    seeds: SeedSummary | None = None
    n_failed: int = 0  # failed records (non-finite metric) excluded from the analysis
    failed: list[dict] = field(default_factory=list)  # one entry per excluded record (pih.records.split_failed)

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "n_rows": len(self.rows),
            "n_censored": self.n_censored,
            "n_failed": self.n_failed,
            "failed": self.failed,
            "monotonicity": self.stats.to_dict() if self.stats else None,
            "seed_summary": self.seeds.to_dict() if self.seeds else None,
            "curves": self.curves,
            "rows": [r.to_dict() for r in self.rows],
        }


def seed_summary(rows: list[GridRow], n_boot: int = 2000, seed: int = 0) -> SeedSummary:
    """Aggregate the rows of a grid (one per point and seed) over seeds (see :class:`SeedSummary`)."""
    by: dict[tuple[Prune, Quantize], list[GridRow]] = defaultdict(list)
    for r in rows:
        by[(r.prune, r.quant)].append(r)
    seeds = tuple(sorted({r.seed for r in rows}))
    points = []
    for (p, q), rs in by.items():
        rs = sorted(rs, key=lambda r: r.seed)
        cens = {r.cer_censored for r in rs if r.gap is None}
        gap = None if cens else float(np.mean([r.gap for r in rs]))
        points.append(GridPoint(p, q, seed_stat([r.advantage_qp for r in rs]),
                                seed_stat([r.m_prune_first for r in rs]), seed_stat([r.m_quant_first for r in rs]),
                                gap, None if not cens else (cens.pop() if len(cens) == 1 else "mixed"),
                                seed_stat([r.m_prune - r.m_prune_first for r in rs])))
    points.sort(key=lambda g: (g.prune.ratio, g.prune.label, g.quant.bits, g.quant.label))
    has_floor = len(seeds) > 1
    lines: list[LineTest] = []
    for along, key, fixed_of in (("bits", lambda g: g.prune, lambda g: g.prune.label),
                                 ("prune", lambda g: g.quant, lambda g: g.quant.label)):
        groups: dict = defaultdict(list)
        for g in points:
            groups[key(g)].append(g)
        for members in groups.values():
            ok = sorted((g for g in members if g.gap is not None), key=lambda g: g.gap)
            if len(ok) < 2:
                continue
            gaps = tuple(g.gap for g in ok)
            means = tuple(g.A.mean for g in ok)
            test = permutation_test(gaps, means) if len(ok) >= 3 else None
            lines.append(LineTest(along, fixed_of(ok[0]), gaps, means,
                                  sum(bool(g.A.above) for g in ok) if has_floor else None, test))
    ok = [g for g in points if g.gap is not None]
    pooled = None
    by_seed: dict[int, float] = {}
    if len(ok) >= 3:
        pooled = cluster_bootstrap([g.gap for g in ok], [g.A.mean for g in ok], [g.prune.label for g in ok],
                                   n_boot=n_boot, seed=seed, cluster="fixed-p line")
        for s in seeds:
            pts = [(r.gap, r.advantage_qp) for r in rows if r.seed == s and r.gap is not None]
            if len(pts) >= 3:
                by_seed[s] = spearman(*zip(*pts, strict=True))
    return SeedSummary(seeds, points, lines, pooled, by_seed)


def _curve_key(q: Quantize) -> Quantize:
    return q.replace(bits=1)


def analyze_grid(records: Iterable[Record], ratio: Callable = ratio_16_over_b, isotonic: bool = False,
                 n_boot: int = 1000, seed: int = 0, cluster_by: str = "line") -> GridAnalysis:
    """G, CER and A(Q→P) for every (P, Q, seed) of a grid, and the monotonicity of A(Q→P) in C*_P − C_Q.

    ``cluster_by``: what the interval of the pooled ρ resamples: "line" (whole fixed-p lines with all their seeds:
    the seeds of a real model are calibration draws on one model) or "seed" (whole seeds: simulated seeds are
    independent models)."""
    if cluster_by not in ("line", "seed"):
        raise bad("cluster_by", cluster_by, "must be 'line' or 'seed'")
    recs = list(records)
    if not recs:
        raise bad("records", "[]", "no records to analyse")
    protocol = require_same_protocol(*recs)
    recs, failed = split_failed(recs)  # failed measurements: excluded here, counted in the result
    by: dict[tuple, float] = {}
    for r in recs:
        k = (r.provenance.seed, r.pipeline)
        if k in by and by[k] != r.value:
            raise bad("records", r.order, f"two records for seed {k[0]} with different values")
        by[k] = r.value
    seeds = sorted({s for s, _ in by})
    rows: list[GridRow] = []
    curves: dict[str, dict] = {}
    for s in seeds:
        singles = {p[0]: v for (sd, p), v in by.items() if sd == s and len(p) == 1}
        families: dict[Quantize, list[tuple[int, float]]] = defaultdict(list)
        for spec, v in singles.items():
            if isinstance(spec, Quantize):
                families[_curve_key(spec)].append((spec.bits, v))
        fitted: dict[Quantize, QuantCurve] = {}
        for fam, pts in families.items():
            if len(pts) >= 2:
                bits, perf = zip(*sorted(pts), strict=True)
                fitted[fam] = QuantCurve(bits, perf, ratio=ratio, isotonic=isotonic)
                curves[f"seed={s} {fam.replace(bits=16).label.replace('16b', '*b')}"] = {
                    "bits": list(bits), "perf": list(perf), "monotone": fitted[fam].monotone,
                    "violations": fitted[fam].violations,
                }
        for (sd, pipe), v_pq in by.items():
            if sd != s or len(pipe) != 2:
                continue
            p, q = pipe
            if not (isinstance(p, Prune) and isinstance(q, Quantize)):
                continue
            v_qp = by.get((s, (q, p)))
            if v_qp is None or p not in singles or q not in singles:
                continue
            curve = fitted.get(_curve_key(q))
            if curve is None:  # Q alone measured at fewer than two bit widths: no CER, said so
                cer_value, cer_censored = None, "no-curve"
            else:
                cer = curve.cer(singles[p])
                cer_value, cer_censored = cer.value, cer.censored
            rows.append(GridRow(p, q, s, singles[p], singles[q], v_pq, v_qp, cer_value, cer_censored,
                                float(ratio(q.bits)), None if curve is None else cer.to_dict()))
    rows.sort(key=lambda r: (r.prune.ratio, r.prune.label, r.quant.bits, r.quant.label, r.seed))
    ok = [r for r in rows if r.gap is not None]
    stats = None
    if len(ok) >= 3 and np.ptp([r.gap for r in ok]) > 0:
        # rows of one seed share the model and the calibration, rows of one pruning setting share the pruner:
        # the interval resamples whole fixed-p lines (all their seeds), never single rows
        by_line = cluster_by == "line"
        stats = monotonicity([r.gap for r in ok], [r.advantage_qp for r in ok], n_boot=n_boot, seed=seed,
                             clusters=[r.prune.label if by_line else r.seed for r in ok],
                             cluster="fixed-p line" if by_line else "seed")
    return GridAnalysis(protocol, rows, stats, len(rows) - len(ok), curves,
                        seed_summary(rows, n_boot=n_boot, seed=seed) if rows else None, len(failed), failed)
