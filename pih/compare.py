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
PRUNE_FIRST, MAJORITY, PIH_RULE = "prune-first", "majority-loo", "pih"
# the layer-wise predictors (registered by pih.commands.compare: they load the dense model)
ADVISE_LAYERS, FISHER_LAYERS, LOSS_LAYERS, MAP_LAYERS = ("advise-layers", "fisher-layers", "loss-layers",
                                                         "alone-map-layers")
NOT_SIMULATION = (PRUNE_FIRST, MAJORITY, PIH_RULE, MEASURED_LAYERS, ADVISE_LAYERS, FISHER_LAYERS, LOSS_LAYERS,
                  MAP_LAYERS)  # every predictor that is not a simulation assumption set


@dataclass
class MeasuredPoint:
    prune: float
    quant: int
    prune_spec: object
    quant_spec: object
    A: dict[int, float]  # per seed
    layer_pred: dict[int, float] = field(default_factory=dict)  # per seed: Σ err(P first) − Σ err(Q first)
    seconds: dict[int, float] = field(default_factory=dict)  # per seed: compress + evaluate, both orders

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
    records: list = field(default_factory=list, repr=False)  # every record of the protocol (each-alone ones too)

    @property
    def measure_seconds(self) -> float:
        """What measuring the grid's pairs cost: compress + evaluate seconds of both orders, every seed."""
        return float(sum(sum(p.seconds.values()) for p in self.points))

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
        A, lp, secs = {}, {}, {}
        for s in seeds:
            pf, qf = d.get(("P->Q", s)), d.get(("Q->P", s))
            if pf is None or qf is None:
                incomplete.append({"prune": p, "quant": b, "seed": s, "missing": "Q->P" if qf is None else "P->Q"})
                continue
            A[s] = order_advantage_of(qf, pf)  # A(Q->P) = M(P∘Q) − M(Q∘P); checks seed, protocol, reversal
            secs[s] = _seconds(pf) + _seconds(qf)
            arr = layer_arrays(qf) if layer_arrays else {}
            if arr and "layer_err_pq" in arr and "layer_err_qp" in arr:
                lp[s] = float(np.sum(arr["layer_err_pq"]) - np.sum(arr["layer_err_qp"]))
        if A:
            ref = d.get(("P->Q", min(A)))
            points.append(MeasuredPoint(float(p), int(b), ref.pipeline[0], ref.pipeline[1], A, lp, secs))
    if not points:
        raise bad("records", f"{len(incomplete)} half pairs", "no grid point has both orders (P->Q and Q->P) "
                  "for one seed")
    seeds = sorted({s for pt in points for s in pt.A})
    prov = {k: v for k, v in recs[0].provenance.to_dict().items() if k not in ("seed", "versions")}
    same = [r for r in records if r.protocol == protocol]
    return MeasuredGrid(protocol, prov, seeds, points, incomplete, len(failed), failed, same)


def _seconds(r: Record) -> float:
    x = r.extras or {}
    return float(x.get("compress_seconds", 0.0) or 0.0) + float(x.get("eval_seconds", 0.0) or 0.0)


def _spearman(x, y) -> float | None:
    """:func:`pih.stats.spearman`, None where it is undefined (as the JSON of a score writes it)."""
    from .stats import spearman

    rho = spearman(x, y)
    return None if math.isnan(rho) else rho


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
        # the measured quantize-first wins (A > 0 above the floor) and how many the predictor calls
        "qfirst_wins_total": sum(r["A_measured"] > 0 for r in above),
        "qfirst_wins_right": sum(r["A_measured"] > 0 and r["A_pred"] > 0 for r in above),
        "failures": [r for r in above if not r["sign_agrees"]],
        "below_floor": below,
        "points": rows,
    }


def layer_predictions(grid: MeasuredGrid) -> dict[tuple[float, int], float]:
    """The "measured-layers" predictor: per point, the mean over seeds of the bridge's own λ-weighted per-layer
    errors, Σ err(P first) − Σ err(Q first) (> 0: quantizing first leaves less layer-wise error)."""
    return {(p.prune, p.quant): float(np.mean(list(p.layer_pred.values()))) for p in grid.points if p.layer_pred}


# ------------------------------------------------------------------------------------------- store predictors
# Predictors that need only the store (no simulation): each returns ({(prune, quant): predicted A(Q→P)}, the
# seconds the measurements it reads cost). Nothing a predictor reads is a scored quantity of the point it
# predicts: the pair records (both orders) are what is scored; the each-alone records are not.


@dataclass(frozen=True)
class StorePredictor:
    name: str
    what: str
    predict: Callable[..., tuple[dict[tuple[float, int], float], float]]  # (grid, **context)
    blind: str = ""  # what the predictor cannot see: the "why" of its failures


PREDICTORS: dict[str, StorePredictor] = {}
MAP_LOG_CAP = 700.0  # the each-alone map's largest log(ppl / dense): beyond it a float overflows
CENSORED_STEP = 1e-6  # how far beyond its bound a censored CER is placed (only its side matters)


def register_predictor(name: str, what: str, predict, blind: str = "") -> StorePredictor:
    """Make ``predict(grid, **context) -> (predictions, cost seconds)`` a predictor ``pih compare`` runs by name
    (context: ``model`` (the --model source or None), ``seeds`` (the simulation's seeds), ``progress``);
    ``blind``: what it cannot see, the sentence its failures are explained by (:func:`failure_classes`)."""
    if not name or name in PREDICTORS:
        raise bad("name", name, "is empty or already a registered predictor")
    PREDICTORS[name] = StorePredictor(name, what, predict, blind)
    return PREDICTORS[name]


FAILURE_CLASSES = {
    "tie": "predicts exactly 0 (both orders alike to it), which is never right",
    "missed Q-first win": "predicts prune first where quantizing first measurably won",
    "false Q-first call": "predicts quantize first where pruning first measurably won",
}


def pool_scores(grids) -> tuple[dict, str | None]:
    """Per predictor, its scores summed over ``grids`` ((scored rows of :func:`score` with their cost_seconds, the
    seconds measuring the grid cost) per grid): the grids it ran on, signs right above the floor over the points
    above it, the measured quantize-first wins it calls, the worst per-grid Spearman ρ (None unless every grid has
    one) and its cost over measuring the grids it ran on; and the best predictor, chosen among those scored on every
    grid by signs, then wins, then worst ρ (None when none ran on all)."""
    names = sorted({r["assumption_set"] for rows, _ in grids for r in rows})
    pooled = {}
    for n in names:
        rows = [(r, m) for rs, m in grids for r in rs if r["assumption_set"] == n]
        above = sum(r["n_above_floor"] for r, _ in rows)
        agree = sum(r["n_agree"] for r, _ in rows)
        rhos = [r["spearman_rho"] for r, _ in rows if r["spearman_rho"] is not None]
        measure = sum(m for _, m in rows)
        pooled[n] = {
            "grids": len(rows),
            "sign_agreement_above_floor": agree / above if above else None,
            "n_agree": agree, "n_above_floor": above,
            "qfirst_wins_right": sum(r["qfirst_wins_right"] for r, _ in rows),
            "qfirst_wins_total": sum(r["qfirst_wins_total"] for r, _ in rows),
            "spearman_min_over_grids": min(rhos) if len(rhos) == len(rows) and rhos else None,
            "cost_ratio": (sum(r["cost_seconds"] for r, _ in rows) / measure) if measure else None,
        }
    full = [n for n in names if pooled[n]["grids"] == len(grids)]
    best = max(full, key=lambda n: (pooled[n]["sign_agreement_above_floor"] or 0, pooled[n]["qfirst_wins_right"],
                                    pooled[n]["spearman_min_over_grids"] or -2)) if full else None
    return pooled, best


def failure_classes(res: dict, blind: str = "") -> list[dict]:
    """The failures of a :func:`score` result (points above the floor with the wrong sign) grouped by class, each
    with one sentence: what the predictor got wrong at those points and, from ``blind``, why (what it cannot
    see). Classes: a tie (prediction exactly 0), a missed quantize-first win, a false quantize-first call."""
    groups: dict[str, list[dict]] = {}
    for f in res["failures"]:
        c = "tie" if f["A_pred"] == 0 else "missed Q-first win" if f["A_measured"] > 0 else "false Q-first call"
        groups.setdefault(c, []).append(f)
    out = []
    for c in FAILURE_CLASSES:
        if c not in groups:
            continue
        pts = groups[c]
        where = ", ".join(f"p={f['prune']:g}/{f['quant']}b (meas {f['A_measured']:+.3g}"
                          + (f", {abs(f['A_measured']) / f['noise']:.1f}x its floor" if f.get("noise") else "") + ")"
                          for f in pts)
        why = f"; it cannot see this because it {blind}" if blind else ""
        out.append({"class": c, "n": len(pts), "points": [(f["prune"], f["quant"]) for f in pts],
                    "sentence": f"{res['assumption_set']} {FAILURE_CLASSES[c]} at {len(pts)} point(s): {where}{why}."})
    return out


def _prune_first(grid: MeasuredGrid, **_):
    return {(p.prune, p.quant): -1.0 for p in grid.points}, 0.0


def _majority_loo(grid: MeasuredGrid, **_):
    """Leave-one-out majority: each point gets the more frequent measured sign among the *other* points above
    their floor (ties and no such points: prune first); the point's own measurement is never used."""
    above = [p for p in grid.points if len(p.A) > 1 and p.above()]
    out = {}
    for p in grid.points:
        others = [q.mean for q in above if q is not p]
        pos, neg = sum(x > 0 for x in others), sum(x < 0 for x in others)
        out[(p.prune, p.quant)] = 1.0 if pos > neg else -1.0
    return out, 0.0


def _pih_rule(grid: MeasuredGrid, **_):
    """PIH (weaker first by CER): the predicted A is the mean over seeds of C*_P − C_Q, from the each-alone
    records (P alone, Q alone at every bit width) by :func:`pih.analysis.analyze_grid`'s CERs; a censored CER is
    placed just beyond the measured range's end it lies past (its bound), so its sign is PIH's."""
    from .analysis import analyze_grid

    g = analyze_grid(grid.records, n_boot=1)  # only the CERs are used; no interval
    by: dict[tuple, list[float]] = defaultdict(list)
    for r in g.rows:
        gap = None if r.cer_prune is None else r.cer_prune - r.c_quant
        if gap is None and r.cer_detail and r.cer_detail.get("bound") is not None:  # censored: just beyond
            side = 1.0 if r.cer_censored == "stronger" else -1.0  # its bound, on the side it lies
            gap = float(r.cer_detail["bound"]) - r.c_quant + side * CENSORED_STEP
        if gap is not None:
            by[(float(r.prune.ratio), int(r.quant.bits))].append(gap)
    singles = [r for r in grid.records if len(r.pipeline) == 1 or r.role == "dense"]
    return {k: float(np.mean(v)) for k, v in by.items()}, float(sum(_seconds(r) for r in singles))


def _measured_layers(grid: MeasuredGrid, **_):
    return layer_predictions(grid), grid.measure_seconds  # a by-product of measuring: costs what measuring does


register_predictor(PRUNE_FIRST, "always prune first (A = -1 everywhere)", _prune_first,
                   "is a constant and never calls a quantize-first win")
register_predictor(MAJORITY, "leave-one-out majority of the other points' measured signs", _majority_loo,
                   "follows the other points' majority, so a point against the grid's trend is always missed")
register_predictor(PIH_RULE, "PIH: weaker first by CER (predicted A = C*_P - C_Q from each-alone records)",
                   _pih_rule, "ranks the methods by their damage alone (CER) and does not see how the second "
                   "method acts on what the first one left")
register_predictor(MEASURED_LAYERS, "the bridge's own per-layer errors of both orders (needs the measurement)",
                   _measured_layers, "sums each layer's error on its own inputs and does not see how the errors "
                   "turn into perplexity")


# ------------------------------------------------------------------ the each-alone performance map (assumption c)
def alone_values(records, seed: int, P, Q) -> tuple[float | None, dict[int, float], dict[int, float]]:
    """The seed's measured perplexities of the dense model and of each method alone: (dense, {i: ppl of P[i]
    alone}, {j: ppl of Q[j] alone}) from the each-alone records of a perplexity protocol (failed ones skipped)."""
    dense, pv, qv = None, {}, {}
    for r in records:
        if not r.ok or r.provenance.seed != seed:
            continue
        if r.provenance.metric != "neg_perplexity":
            raise bad("records", r.provenance.metric, "the each-alone map is fitted on perplexities")
        if r.role == "dense":
            dense = -r.value
        elif r.role in ("P", "Q"):
            specs = P if r.role == "P" else Q
            for i, s in enumerate(specs):
                if r.pipeline == (s,):
                    (pv if r.role == "P" else qv)[i] = -r.value
    return dense, pv, qv


def fit_alone_map(p_points, q_points, dense: float) -> Callable[[float, float], float]:
    """The perplexity of an order from its layer errors, fitted on the each-alone points only: ``p_points`` and
    ``q_points`` are (summed layer error, measured perplexity) of each pruning / quantization alone, ``dense`` the
    dense perplexity. Model: log(ppl / dense) = exp(k_P) (e_P + α e_Q)^c, one exponent c for both methods and α
    = exp((k_Q − k_P) / c) the price of a unit of quantization error in units of pruning error; fitted by least
    squares of log log(ppl / dense) on log e with one intercept per method (points where the method did not raise
    the perplexity, or has no error, carry no information on the log scale and are left out). A method without
    such a point shares the other's intercept (α = 1); a non-increasing fit (c <= 0) or a single point falls back
    to c = 1. Returns ``ppl(e_P, e_Q)`` (log(ppl / dense) capped at MAP_LOG_CAP, so it stays finite)."""
    rows = [(g, math.log(e), math.log(math.log(v / dense))) for g, pts in ((0, p_points), (1, q_points))
            for e, v in pts if e > 0 and v > dense]
    if not rows:
        raise bad("each-alone records", len(p_points) + len(q_points), "no method alone raised the perplexity: "
                  "nothing to fit the map on")
    groups = sorted({g for g, _, _ in rows})
    x = np.array([r[1] for r in rows])
    y = np.array([r[2] for r in rows])
    G = np.array([[1.0 if r[0] == g else 0.0 for g in groups] for r in rows])
    c = 1.0
    if len(rows) > len(groups) and np.ptp(x) > 0:
        coef = np.linalg.lstsq(np.column_stack([G, x]), y, rcond=None)[0]
        if coef[-1] > 0:
            c = float(coef[-1])
    k = {g: float(np.mean((y - c * x)[G[:, n] == 1])) for n, g in enumerate(groups)}
    kp, kq = k.get(0, k.get(1)), k.get(1, k.get(0))
    alpha = math.exp((kq - kp) / c)

    def ppl(e_p: float, e_q: float) -> float:
        d = e_p + alpha * e_q
        return dense * math.exp(min(math.exp(kp) * d ** c, MAP_LOG_CAP)) if d > 0 else dense

    ppl.params = {"k_P": kp, "k_Q": kq, "c": c, "alpha": alpha, "n_fit": len(rows)}
    return ppl
