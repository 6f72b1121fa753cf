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
class GridAnalysis:
    protocol: str
    rows: list[GridRow]
    stats: Monotonicity | None
    n_censored: int
    curves: dict[str, dict] = field(default_factory=dict)
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
            "curves": self.curves,
            "rows": [r.to_dict() for r in self.rows],
        }


def _curve_key(q: Quantize) -> Quantize:
    return q.replace(bits=1)


def analyze_grid(records: Iterable[Record], ratio: Callable = ratio_16_over_b, isotonic: bool = False,
                 n_boot: int = 1000, seed: int = 0) -> GridAnalysis:
    """G, CER and A(Q→P) for every (P, Q, seed) of a grid, and the monotonicity of A(Q→P) in C*_P − C_Q."""
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
        stats = monotonicity([r.gap for r in ok], [r.advantage_qp for r in ok], n_boot=n_boot, seed=seed)
    return GridAnalysis(protocol, rows, stats, len(rows) - len(ok), curves, len(failed), failed)
