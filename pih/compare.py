"""Predicted against measured order advantages: the measured grid with its noise floor, and the scores.

Used by ``pih compare`` (numpy/scipy only; the simulation's predictions are made by :mod:`sim.predict`).

The measured A(Q→P) of a grid point is M(Q first) − M(P first) per calibration seed. Its **noise floor** is twice
the sample standard deviation (ddof = 1) of A over the seeds: a point is *above the floor* when |mean A| exceeds it,
i.e. when the order's sign would survive a re-draw of the calibration set (and its tie-breaks) about 95 % of the
time under Gaussian noise; points below are reported separately and never counted as agreements or disagreements.
The pooled floor, 2·sqrt(mean over points of the variance), is reported beside it (and the counts under it, as a
robustness check). With a single seed there is no floor: every point counts and the result says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .analysis import order_advantage_of
from .errors import bad
from .records import Record, require_same_protocol, split_failed

NOISE_RULE = ("noise(point) = 2 x sample std (ddof=1) of measured A(Q->P) over calibration seeds; "
              "a point is above the floor when |mean A| > noise(point)")
MEASURED_LAYERS = "measured-layers"


@dataclass
class MeasuredPoint:
    prune: float
    quant: int
    prune_spec: object
    quant_spec: object
    A: dict[int, float]  # per seed
    layer_pred: dict[int, float] = field(default_factory=dict)  # per seed: Σ err(P first) − Σ err(Q first)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.A)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.A.values())))

    @property
    def noise(self) -> float | None:
        if len(self.A) < 2:
            return None
        return 2.0 * float(np.std(list(self.A.values()), ddof=1))

    def above(self, floor: float | None = None) -> bool:
        """|mean A| above ``floor`` (default: this point's own noise; no floor with one seed)."""
        f = self.noise if floor is None else floor
        return abs(self.mean) > (f or 0.0)


@dataclass
class MeasuredGrid:
    protocol: str
    provenance: dict
    seeds: list[int]
    points: list[MeasuredPoint]
    incomplete: list[dict]
    n_failed: int = 0  # failed records (non-finite metric) excluded
    failed: list[dict] = field(default_factory=list)  # one entry per excluded record (pih.records.split_failed)

    @property
    def pooled_noise(self) -> float | None:
        var = [np.var(list(p.A.values()), ddof=1) for p in self.points if len(p.A) >= 2]
        return 2.0 * math.sqrt(float(np.mean(var))) if var else None

    def noise_floor(self) -> dict:
        return {"rule": NOISE_RULE, "pooled": self.pooled_noise,
                "pooled_rule": "2 x sqrt(mean over grid points of the variance of A over seeds)",
                "n_seeds": len(self.seeds),
                "n_above": sum(p.above() for p in self.points) if len(self.seeds) > 1 else None,
                "n_below": sum(not p.above() for p in self.points) if len(self.seeds) > 1 else None}


def measured_grid(records: Iterable[Record], layer_arrays: Callable[[Record], Mapping] | None = None) -> MeasuredGrid:
    """The grid of measured A(Q→P) from records holding both orders (pipelines (P, Q) and (Q, P), as
    ``pih run`` writes them) for one protocol, one or more seeds. ``layer_arrays(record)`` returns a Q→P record's
    sidecar arrays (``layer_err_pq``/``layer_err_qp``: the bridge's per-layer errors of both orders) for the
    "measured-layers" predictor."""
    records, failed = split_failed(records)  # failed measurements: excluded here, counted in the result
    recs = [r for r in records if r.role in ("P->Q", "Q->P") and "settings" not in r.point]
    if not recs:
        raise bad("records", "store", "no (P, Q) pairs: the store needs both orders (P->Q and Q->P) of a grid"
                  + (f" ({len(failed)} failed records excluded)" if failed else ""))
    protocol = require_same_protocol(*recs)
    by: dict[tuple, dict] = defaultdict(dict)
    for r in recs:
        by[r.coords][(r.role, r.provenance.seed)] = r
    points, incomplete = [], []
    for (p, b), d in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        seeds = sorted({s for _, s in d})
        A, lp = {}, {}
        for s in seeds:
            pf, qf = d.get(("P->Q", s)), d.get(("Q->P", s))
            if pf is None or qf is None:
                incomplete.append({"prune": p, "quant": b, "seed": s, "missing": "Q->P" if qf is None else "P->Q"})
                continue
            A[s] = order_advantage_of(qf, pf)  # A(Q->P) = M(P∘Q) − M(Q∘P); checks seed, protocol, reversal
            arr = layer_arrays(qf) if layer_arrays else {}
            if arr and "layer_err_pq" in arr and "layer_err_qp" in arr:
                lp[s] = float(np.sum(arr["layer_err_pq"]) - np.sum(arr["layer_err_qp"]))
        if A:
            ref = d.get(("P->Q", min(A)))
            points.append(MeasuredPoint(float(p), int(b), ref.pipeline[0], ref.pipeline[1], A, lp))
    if not points:
        raise bad("records", f"{len(incomplete)} half pairs", "no grid point has both orders (P->Q and Q->P) "
                  "for one seed")
    seeds = sorted({s for pt in points for s in pt.A})
    prov = {k: v for k, v in recs[0].provenance.to_dict().items() if k not in ("seed", "versions")}
    return MeasuredGrid(protocol, prov, seeds, points, incomplete, len(failed), failed)


def _spearman(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def score(name: str, predicted: Mapping[tuple[float, int], float], grid: MeasuredGrid) -> dict:
    """Sign agreement and Spearman ρ of ``predicted[(prune, quant)]`` against the measured mean A.

    Sign agreement counts only points above their noise floor (all points with one seed); a prediction of exactly
    0 never agrees. ρ is over every point with a prediction (``spearman_rho``) and over those above the floor.
    """
    pts = [p for p in grid.points if (p.prune, p.quant) in predicted]
    if not pts:
        raise bad("predicted", name, "predicts none of the measured grid points")
    has_floor = len(grid.seeds) > 1
    rows, above, below = [], [], []
    for p in pts:
        a_pred = float(predicted[(p.prune, p.quant)])
        ok = bool(np.sign(a_pred) == np.sign(p.mean) and a_pred != 0)
        row = {"prune": p.prune, "quant": p.quant, "A_pred": a_pred, "A_measured": p.mean,
               "A_seeds": [p.A[s] for s in p.seeds], "noise": p.noise, "above_floor": p.above() if has_floor else None,
               "sign_agrees": ok}
        rows.append(row)
        (above if (p.above() or not has_floor) else below).append(row)
    pooled = grid.pooled_noise
    above_pooled = [r for r in rows if pooled is None or abs(r["A_measured"]) > pooled]
    agree = sum(r["sign_agrees"] for r in above)
    n_pos = sum(r["A_measured"] > 0 for r in above)
    n_neg = sum(r["A_measured"] < 0 for r in above)
    x = [r["A_pred"] for r in rows]
    y = [r["A_measured"] for r in rows]
    return {
        "assumption_set": name,
        "n_points": len(rows),
        "n_above_floor": len(above),
        "n_below_floor": len(below),
        "n_agree": agree,
        "sign_agreement": agree / len(above) if above else None,
        "spearman_rho": _spearman(x, y),
        "spearman_rho_above_floor": _spearman([r["A_pred"] for r in above], [r["A_measured"] for r in above]),
        # what "always predict the more frequent measured sign" scores on the same points (no model at all)
        "majority_sign_baseline": max(n_pos, n_neg) / len(above) if above else None,
        "sign_agreement_all_points": sum(r["sign_agrees"] for r in rows) / len(rows),
        "sign_agreement_pooled_floor": (sum(r["sign_agrees"] for r in above_pooled) / len(above_pooled)
                                        if above_pooled else None),
        "n_above_pooled_floor": len(above_pooled),
        "noise_floor": {"rule": NOISE_RULE if has_floor else "one seed: no noise floor, every point counts",
                        "pooled": pooled},
        "failures": [r for r in above if not r["sign_agrees"]],
        "below_floor": below,
        "points": rows,
    }


def layer_predictions(grid: MeasuredGrid) -> dict[tuple[float, int], float]:
    """The "measured-layers" predictor: per point, the mean over seeds of the bridge's own λ-weighted per-layer
    errors, Σ err(P first) − Σ err(Q first) (> 0: quantizing first leaves less layer-wise error)."""
    return {(p.prune, p.quant): float(np.mean(list(p.layer_pred.values()))) for p in grid.points if p.layer_pred}
