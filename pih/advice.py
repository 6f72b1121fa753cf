"""The evidence of ``pih advise``, in numbers only (numpy): which order the measured layer errors favour, how
sure that is, what it means in perplexity, and what the Progressive Intensity Hypothesis would pick.

The torch side (:mod:`pih.bridge.advise`) measures — per-layer errors of every order, each method alone, a few
evaluations on a quantization curve — and hands those numbers to :func:`evidence`, which returns a frozen
:class:`Advice`; :mod:`pih.render` and :mod:`pih.render_plots` draw it. Nothing here touches a model, so the
evidence of any backend's measurements (or of stored ones) is computed the same way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import bad
from .methods import Prune, Quantize, pipeline_label
from .metrics import ROUNDOFF, QuantCurve, ratio_16_over_b
from .order import predicted_order
from .stats import sign_test, wilson

WEIGHTINGS = ("relative", "raw")


def next_curve_bits(curve: dict[int, float], targets: list[float], lowest: int = 2, highest: int = 8) -> int | None:
    """The next bit width to measure so that every target perplexity is bracketed by the quantizer's curve
    (``curve``: bits -> perplexity): one bit harsher while a target is worse than the harshest point, twice the bits
    (at most ``highest``) while a target is better than the mildest; None when bracketed or at the limits. A curve
    needs two points: with one, the harsher side first."""
    bits = sorted(curve)
    harsh, mild = bits[0], bits[-1]
    if any(t > curve[harsh] for t in targets) and harsh > lowest:
        return harsh - 1
    if any(t < curve[mild] for t in targets) and mild < highest:
        return min(highest, 2 * mild)
    if len(bits) < 2:
        return harsh - 1 if harsh > lowest else (min(highest, 2 * mild) if mild < highest else None)
    return None


def layer_weights(ref: np.ndarray, weighting: str) -> np.ndarray:
    if weighting not in WEIGHTINGS:
        raise bad("weighting", weighting, f"must be one of {WEIGHTINGS}")
    if weighting == "raw":
        return np.ones_like(ref)
    return 1.0 / np.where(ref > 0, ref, 1.0)


def confidence(d: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """How consistently the layers favour one order: ``d`` = per-layer (weighted) error of the runner-up minus that
    of the predicted order (positive: the layer agrees with the prediction)."""
    d = np.asarray(d, dtype=float)
    total = float(d.sum())
    sign = np.sign(total) if total != 0 else 1.0
    agree = float(np.mean(np.sign(d) == sign)) if d.size else float("nan")
    nz = float(np.mean(d != 0)) if d.size else float("nan")
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    margin = total / (math.sqrt(d.size) * sd) if sd > 0 else (math.inf if total else 0.0)
    rng = np.random.default_rng(seed)
    if d.size and n_boot > 0:
        idx = rng.integers(0, d.size, size=(n_boot, d.size))
        boot = float(np.mean(np.sign(d[idx].sum(1)) == sign))
    else:
        boot = float("nan")
    level = "high" if boot >= 0.95 and margin >= 2 else ("medium" if boot >= 0.8 else "low")
    return {"layers_agreeing": agree, "layers_nonzero": nz, "bootstrap_sign": boot, "margin_sd": margin,
            "level": level, "n_layers": int(d.size)}


def error_to_metric(dense_ppl: float, points: list[tuple[float, float]], scale: float = 1.0):
    """The error->perplexity map of Assumption A1 (performance loss proportional to the summed unit errors), with
    M = −log perplexity: log(ppl/ppl_dense) = s·E, the slope s fitted by least squares through the origin on the
    measured (E, ppl) points (each method alone, the curve). ``scale`` multiplies the log increment (partial models:
    the ratio of all layers to measured layers, log-perplexity increments adding over layers).
    Returns ``(f, info)``: ``f(E) -> (ppl, beyond the fitted range)``; ``info``: slope, R², n points, and
    ``resolved`` (False when the slope is not positive: the evaluations cannot resolve the scale)."""
    E = np.array([p[0] for p in points], dtype=float)
    y = np.log(np.array([p[1] for p in points], dtype=float) / dense_ppl)
    den = float((E * E).sum())
    slope = float((E * y).sum() / den) if den > 0 else 0.0
    ss = float((y * y).sum())
    r2 = 1 - float(((y - slope * E) ** 2).sum()) / ss if ss > 0 else float("nan")
    emax = float(E.max()) if E.size else 0.0

    def f(e: float) -> tuple[float, bool]:
        return float(dense_ppl * math.exp(min(700.0, slope * e * scale))), bool(e > emax)

    return f, {"slope_log_ppl_per_error": slope, "r2": r2, "n_points": int(E.size), "resolved": slope > 0,
               "model": "log(ppl/ppl_dense) = slope * E (A1), fitted through the origin on each method alone and the "
                        "curve points" + (f"; increments scaled by {scale:.3g} (all/measured layers)"
                                          if scale != 1 else "")}


@dataclass(frozen=True)
class Advice:
    """What the measurements say (see :func:`evidence`); ``to_dict()`` is the JSON of ``pih advise`` without the
    measurement's own fields (model, cost, provenance)."""

    methods: tuple[str, ...]
    recommendation: str
    runner_up: str
    expected_gain_ppl: float | None
    error_to_ppl: Mapping[str, Any]
    tie: tuple[str, ...] | None
    expected_gain_note: str
    orders: tuple[Mapping[str, Any], ...]
    confidence: Mapping[str, Any]
    weighting: str
    layers: Mapping[str, Any]
    cer: tuple[Mapping[str, Any], ...]
    quant_curve: Mapping[str, Any] | None
    pih_order: str | None
    pih_agrees: bool | None
    few_token_ppl: Mapping[str, float]
    predicted_A_QP_error: float | None = None
    predicted_A_QP_ppl: float | None = None
    predicted_first: str | None = None
    # by method indices, for whoever stores or verifies the advice
    best: tuple[int, ...] = ()
    pih: tuple[int, ...] | None = None
    summed_errors: Mapping[tuple[int, ...], float] | None = None  # every order's, and each method alone's (k,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "methods": list(self.methods), "n_methods": len(self.methods),
            "recommendation": self.recommendation, "predicted_best": self.recommendation,
            "runner_up": self.runner_up, "expected_gain_ppl": self.expected_gain_ppl,
            "error_to_ppl": dict(self.error_to_ppl), "tie": list(self.tie) if self.tie else None,
            "expected_gain_note": self.expected_gain_note, "orders": [dict(o) for o in self.orders],
            "confidence": dict(self.confidence), "weighting": self.weighting,
            "layers": copy.deepcopy(dict(self.layers)), "cer": [dict(r) for r in self.cer],
            "quant_curve": dict(self.quant_curve) if self.quant_curve else None,
            "pih_order": self.pih_order, "pih_agrees": self.pih_agrees, "few_token_ppl": dict(self.few_token_ppl)}
        if self.predicted_first is not None:
            out["predicted_A_QP_error"] = self.predicted_A_QP_error
            out["predicted_A_QP_ppl"] = self.predicted_A_QP_ppl
            out["predicted_first"] = self.predicted_first
        return out



def tied_orders(E: Mapping[str, float]) -> list[str]:
    """The orders whose predicted error equals the smallest one within round-off, best first: the rule of A
    (:func:`pih.metrics.order_advantage`), relative to the larger of the two errors, so a tie is never declared
    between predictions that differ by more than their last digits, however small the errors are."""
    ranked = sorted(E, key=lambda o: E[o])
    best = ranked[0]
    return [o for o in ranked if abs(E[o] - E[best]) <= ROUNDOFF * max(abs(E[o]), abs(E[best]))]


def evidence(methods: Sequence, orders: Sequence[tuple[int, ...]], layer_names: Sequence[str], ref: np.ndarray,
             errors: Mapping[tuple[int, ...], np.ndarray], alone: Sequence[int], ppl: Mapping[Any, float],
             curve_idx: Mapping[int, int], labels: Mapping[int, str], weighting: str = "relative",
             scale: float = 1.0, n_boot: int = 2000, seed: int = 0, evaluated: bool = True,
             layers_note: str = "") -> Advice:
    """The advice from the measurements.

    ``methods``: the specs compared (indices 0..n-1); ``orders``: every order as a tuple of method indices;
    ``errors[order]``: the per-layer output errors of that order (and ``errors[(k,)]``: spec ``k`` alone, for every
    ``k`` in ``alone``: the methods and the reference quantizer's curve); ``ref``: each layer's tr(W H Wᵀ);
    ``ppl``: the few-token perplexities ("dense" and each ``k`` in ``alone``); ``curve_idx``: bit width -> the
    index of the reference quantizer at that width; ``labels``: index -> label of every spec in ``alone``;
    ``scale``: all / measured layers (partial models); ``evaluated``: False when no evaluation was run (order
    only: no perplexity map, no CER)."""
    methods = tuple(methods)
    n = len(methods)
    ref = np.asarray(ref, dtype=float)
    ref_q = next((m for m in methods if isinstance(m, Quantize)), None)
    w = layer_weights(ref, weighting)
    E = {o: float((w * errors[o]).sum()) for o in orders}
    E_alone = {k: float((w * errors[(k,)]).sum()) for k in alone}
    if evaluated:
        to_ppl, map_info = error_to_metric(ppl["dense"], [(E_alone[k], ppl[k]) for k in alone], scale)
        pred = {o: to_ppl(E[o]) for o in orders}
    else:
        map_info = {"resolved": False, "model": "no evaluations (order only)"}
        pred = {o: (None, False) for o in orders}
    ranked = sorted(orders, key=lambda o: E[o])
    best, runner_up = ranked[0], ranked[1]
    d = w * (errors[runner_up] - errors[best])
    conf = confidence(d, n_boot, seed)
    tied = tied_orders(E)
    if len(tied) > 1:
        conf["level"] = "tie"

    # CERs and what PIH predicts
    cer_rows, pih_order, curve_info = [], None, None
    if ref_q is not None and len(curve_idx) >= 2 and evaluated:
        bits = sorted(curve_idx)
        curve = QuantCurve(bits, [-ppl[curve_idx[b]] for b in bits])
        curve_info = {"quantizer": ref_q.replace(bits=bits[0]).label.replace(f"{bits[0]}b", "*b"),
                      "bits": bits, "ppl": [ppl[curve_idx[b]] for b in bits], "monotone": curve.monotone,
                      "violations": curve.violations, "ratio": "C_Q(b) = 16/b"}
        vals = []
        for k, m in enumerate(methods):
            if isinstance(m, Quantize) and m.replace(bits=ref_q.bits) == ref_q:
                c = {"value": float(ratio_16_over_b(m.bits)), "censored": None, "bound": None, "is_C_Q": True}
                v = c["value"]
            else:
                cc = curve.cer(-ppl[k]).to_dict()
                c = {**cc, "is_C_Q": False}
                v = cc["value"] if cc["value"] is not None else cc["bound"] * (
                    1 - 1e-6 if cc["censored"] == "weaker" else 1 + 1e-6)
            vals.append(v)
            cer_rows.append({"method": m.label, "ppl_alone_few_tokens": ppl[k], **c})
        pih_order = tuple(methods.index(m) for m in predicted_order(methods, vals))
    lab = lambda o: pipeline_label(tuple(methods[i] for i in o))  # noqa: E731
    orders_out = []
    for o in orders:
        p, ext = pred[o]
        orders_out.append({"order": lab(o), "layerwise_error": E[o], "predicted_ppl": p,
                           "predicted_ppl_extrapolated": ext, "predicted_best": o == best,
                           "pih_predicted": o == pih_order})
    gain = pred[runner_up][0] - pred[best][0] if map_info["resolved"] else None
    note = ("perplexity of the runner-up minus that of the recommended order, from the layer errors through the "
            "measured error->perplexity map (few evaluation tokens, one-shot dense calibration" + layers_note
            + "): approximate" + ("" if map_info["resolved"] else "; NOT resolved: the few-token evaluations show "
                                  "no perplexity increase with the error (raise --eval-tokens)"))
    a_err = a_ppl = first = None
    if n == 2:
        iq = next((i for i, m in enumerate(methods) if isinstance(m, Quantize)), None)
        ip = next((i for i, m in enumerate(methods) if isinstance(m, Prune)), None)
        if iq is not None and ip is not None:
            a_err = E[(ip, iq)] - E[(iq, ip)]
            a_ppl = (pred[(ip, iq)][0] - pred[(iq, ip)][0]) if map_info["resolved"] else None
            first = "quantize" if a_err > 0 else "prune"
    return Advice(
        methods=tuple(m.label for m in methods), recommendation=lab(best), runner_up=lab(runner_up),
        expected_gain_ppl=gain, error_to_ppl=map_info, tie=tuple(lab(o) for o in tied) if len(tied) > 1 else None,
        expected_gain_note=note, orders=tuple(orders_out), confidence=conf, weighting=weighting,
        layers={"names": list(layer_names), "diff_runner_up_minus_best": d.tolist(), "ref": ref.tolist(),
                "errors": {lab(o): np.asarray(errors[o]).tolist() for o in orders}},
        cer=tuple(cer_rows), quant_curve=curve_info, pih_order=lab(pih_order) if pih_order is not None else None,
        pih_agrees=(pih_order == best) if pih_order is not None else None,
        few_token_ppl={("dense" if v == "dense" else labels[v]): ppl[v] for v in ppl},
        predicted_A_QP_error=a_err, predicted_A_QP_ppl=a_ppl, predicted_first=first, best=best, pih=pih_order,
        summed_errors={**E, **{(k,): e for k, e in E_alone.items()}})


# -- calibration against advise's own verified outcomes -------------------------------------------------------
CALIBRATION_MIN_RUNS = 5  # verified runs per agreement bin at least (fewer: merged with the next lower level)
LEVEL_RULE = ("high: the Wilson 95 % lower bound of the fraction right at this agreement level >= 0.8; medium: "
              ">= 0.5; low: below; uncalibrated: no verified run at this agreement level; tie: identical errors")


def gain_ratio(runs: Sequence[Mapping[str, Any]]) -> dict | None:
    """The measured/predicted gain ratios of verified runs (those with a predicted gain): n, min, 5 %, median,
    95 %, max (negative: the recommended order was the worse one)."""
    ratios = np.array([r["measured_gain"] / r["predicted_gain"] for r in runs
                       if r.get("predicted_gain") and r.get("measured_gain") is not None], dtype=float)
    if not ratios.size:
        return None
    return {"n": int(ratios.size), "min": float(ratios.min()), "q05": float(np.quantile(ratios, 0.05)),
            "median": float(np.median(ratios)), "q95": float(np.quantile(ratios, 0.95)), "max": float(ratios.max()),
            "ratio": "measured gain (--verify) / predicted gain (few-token map)"}


def _agreement_bins(runs: Sequence[Mapping[str, Any]], min_runs: int) -> list[dict]:
    """Bins of the layer agreement, from the top down, each of at least ``min_runs`` runs (equal agreements never
    split; a short remainder joins the bin above it); contiguous edges at the midpoints between bins, the lowest
    bin starting at its lowest verified agreement (below it: uncalibrated)."""
    vals = sorted({r["agreement"] for r in runs}, reverse=True)
    groups: list[list[Mapping[str, Any]]] = []
    cur: list[Mapping[str, Any]] = []
    for v in vals:
        cur += [r for r in runs if r["agreement"] == v]
        if len(cur) >= min_runs:
            groups.append(cur)
            cur = []
    if cur:
        if groups:
            groups[-1] += cur
        else:
            groups.append(cur)
    bins = []
    for g in groups:
        a = [r["agreement"] for r in g]
        k = sum(bool(r["right"]) for r in g)
        dec = [r for r in g if r.get("decided")]
        lo, hi = wilson(k, len(g))
        bins.append({"observed_lo": min(a), "observed_hi": max(a), "n": len(g), "right": k, "wilson95": [lo, hi],
                     "n_decided": len(dec), "right_decided": sum(bool(r["right"]) for r in dec),
                     "level": level_of(lo), "gain_ratio": gain_ratio(g)})
    for i, b in enumerate(bins):
        b["hi"] = 1.0 if i == 0 else (bins[i - 1]["observed_lo"] + b["observed_hi"]) / 2
        b["lo"] = b["observed_lo"] if i == len(bins) - 1 else (b["observed_lo"] + bins[i + 1]["observed_hi"]) / 2
    return bins


def level_of(wilson_lo: float) -> str:
    """The confidence level a calibrated agreement bin earns (:data:`LEVEL_RULE`)."""
    return "high" if wilson_lo >= 0.8 else ("medium" if wilson_lo >= 0.5 else "low")


def calibration_table(runs: Sequence[Mapping[str, Any]], min_runs: int = CALIBRATION_MIN_RUNS) -> dict:
    """The calibration of advise from verified runs (one dict per run: ``layer_fraction``, ``agreement``, ``tie``,
    ``right``, ``decided``, ``predicted_gain``, ``measured_gain``, ``model``, ``family``, ``n_linear_layers`` and the
    ``protocol``), one table per layer fraction (the agreement of a quarter of the layers and of all of them are
    different measurements): the fraction right per agreement bin with its Wilson 95 % interval, the ties, the
    measured/predicted gain ratios (quantiles), and the scope verified (models, families, sizes, protocols)."""
    tables: dict[str, Any] = {}
    for lf in sorted({r["layer_fraction"] for r in runs}):
        rs = [r for r in runs if r["layer_fraction"] == lf]
        ties = [r for r in rs if r["tie"]]
        kt = sum(bool(r["right"]) for r in ties)
        gain = gain_ratio([r for r in rs if not r["tie"]])
        models = {}
        for r in rs:
            m = models.setdefault(r["model"], {"model": r["model"], "family": r["family"],
                                               "n_linear_layers": r["n_linear_layers"], "runs": 0})
            m["runs"] += 1
        tables[repr(float(lf))] = {
            "layer_fraction": float(lf), "n_runs": len(rs),
            "bins": _agreement_bins([r for r in rs if not r["tie"]], min_runs),
            "tie": {"n": len(ties), "right": kt, "wilson95": list(wilson(kt, len(ties)))} if ties else None,
            "gain_ratio": gain, "models": list(models.values()),
            "families": sorted({r["family"] for r in rs}),
            "n_linear_layers": [min(r["n_linear_layers"] for r in rs), max(r["n_linear_layers"] for r in rs)],
            "protocols": [dict(p) for p in sorted({tuple(sorted(r["protocol"].items())) for r in rs})]}
    return {"min_runs_per_bin": min_runs, "level_rule": LEVEL_RULE, "tables": tables}


PROTOCOL_KEYS = ("eval_tokens", "calibration_size", "seqlen", "weighting", "offgrid")


def protocol_of(prov: Mapping[str, Any]) -> dict:
    """The part of advise's provenance (its JSON ``provenance``) that its calibration depends on."""
    st = prov.get("settings") or {}
    return {"eval_tokens": st.get("advise_eval_tokens"), "calibration_size": prov.get("calibration_size"),
            "seqlen": prov.get("seqlen"), "weighting": st.get("weighting"),
            "offgrid": (st.get("bridge") or {}).get("offgrid")}


def calibrate(out: Mapping[str, Any], cal: Mapping[str, Any] | None) -> dict:
    """What the verified outcomes say about one advice (``out``: advise's JSON dict, its ``provenance`` and
    ``model_info`` included): the fraction right at its agreement level, the calibrated level, the expected gain as
    an interval (the predicted gain times the 5-95 % quantiles of the measured/predicted ratios, their range below
    20 runs), and where the run is outside what was verified. ``cal``: :func:`calibration_table`'s dict (None:
    nothing verified)."""
    prov = out.get("provenance") or {}
    conf = out["confidence"]
    lf = float(out["measurement"]["layer_fraction"])
    res: dict[str, Any] = {"source": (cal or {}).get("source"), "level_rule": LEVEL_RULE, "outside_verified": []}
    tables = (cal or {}).get("tables") or {}
    table = tables.get(repr(lf))
    if table is None and tables:
        near = min(tables.values(), key=lambda t: abs(math.log(t["layer_fraction"] / lf)))
        res["outside_verified"].append(
            f"layer fraction {lf:g} was never verified (verified: "
            + ", ".join(f"{t['layer_fraction']:g}" for t in tables.values())
            + f"); calibrated by the runs at {near['layer_fraction']:g}")
        table = near
    if table is None:
        res.update(level="tie" if conf.get("level") == "tie" else "uncalibrated", bin=None, gain_interval_ppl=None,
                   text="uncalibrated (no verified runs)")
        return res
    res["layer_fraction_table"] = table["layer_fraction"]
    a = conf["layers_agreeing"]
    if conf.get("level") == "tie":
        t = table.get("tie")
        res["bin"] = t
        res["level"] = "tie"
        res["text"] = (f"in {t['n']} verified ties the order listed first was best in {t['right']} (Wilson 95 % "
                       f"{100 * t['wilson95'][0]:.0f}-{100 * t['wilson95'][1]:.0f} %): the order is not decided"
                       if t else "uncalibrated (no verified ties)")
    else:
        b = next((b for b in table["bins"] if b["lo"] <= a <= b["hi"]), None)
        res["bin"] = b
        if b is None:
            res["level"] = "uncalibrated"
            res["text"] = "uncalibrated (no verified runs at this agreement level)"
        else:
            res["level"] = b["level"]
            rng = (f"{100 * b['observed_lo']:.0f} %" if b["observed_lo"] == b["observed_hi"]
                   else f"{100 * b['observed_lo']:.0f}-{100 * b['observed_hi']:.0f} %")
            res["text"] = (f"right in {b['right']} of {b['n']} verified runs with agreement {rng} (Wilson 95 % "
                           f"{100 * b['wilson95'][0]:.0f}-{100 * b['wilson95'][1]:.0f} %)")
    # the gain: the predicted gain times the 5-95 % measured/predicted ratios of the runs at this agreement level
    # (of every verified run of the table where this level has too few)
    g, gr, scope = out.get("expected_gain_ppl"), table.get("gain_ratio"), "every verified run"
    bg = (res.get("bin") or {}).get("gain_ratio")
    if conf.get("level") != "tie" and bg and bg["n"] >= CALIBRATION_MIN_RUNS:
        gr, scope = bg, "the verified runs at this agreement level"
    if gr:  # 5-95 % quantiles from 20 ratios on; below, the range of the few there are
        lo_r, hi_r = (gr["q05"], gr["q95"]) if gr["n"] >= 20 else (gr["min"], gr["max"])
        res["gain_ratio_interval"] = [lo_r, hi_r]
        res["gain_ratio_interval_kind"] = "5-95 % quantiles" if gr["n"] >= 20 else "range"
    res["gain_interval_ppl"] = ([g * res["gain_ratio_interval"][0], g * res["gain_ratio_interval"][1]]
                                if g is not None and gr else None)
    res["gain_ratio"] = gr
    res["gain_ratio_scope"] = scope
    # the scope: model family, size, protocol
    info, proto = out.get("model_info") or {}, protocol_of(prov)
    fam, nl = info.get("family"), info.get("n_linear_layers")
    if fam is not None and fam not in table["families"]:
        res["outside_verified"].append(f"model family {fam!r} was never verified (verified: "
                                       f"{', '.join(table['families'])})")
    lo, hi = table["n_linear_layers"]
    if nl is not None and not lo <= nl <= hi:
        res["outside_verified"].append(f"{nl} linear layers: outside the verified sizes ({lo}-{hi} linear layers)")
    same = [m for m in table["models"] if m["model"] == prov.get("model")]
    if not same:
        res["outside_verified"].append(
            "this model (its content identity) is not among the verified ones (verified: "
            + "; ".join(f"{m['model']} ({m['runs']} runs)" for m in table["models"]) + ")")
    elif same[0]["runs"] < CALIBRATION_MIN_RUNS:
        res["outside_verified"].append(f"this model has only {same[0]['runs']} verified run(s)")
    diff = [k for k in PROTOCOL_KEYS
            if proto.get(k) is not None and all(p.get(k) != proto[k] for p in table["protocols"])]
    if diff:
        res["outside_verified"].append("protocol never verified: " + ", ".join(
            f"{k} {proto[k]} (verified: {', '.join(sorted({str(p.get(k)) for p in table['protocols']}))})"
            for k in diff))
    return res


CALIBRATION_FILE = "data/advise_calibration.json"  # package data, from experiments/advise_measure.py --calibrate


def load_calibration() -> dict | None:
    """The calibration table shipped with pih (None when the package data is missing)."""
    import json
    from importlib.resources import files

    try:
        cal = json.loads(files("pih").joinpath(CALIBRATION_FILE).read_text())
    except (FileNotFoundError, OSError, ValueError):
        return None
    cal.pop("runs", None)  # the per-run rows: provenance of the table, not needed to apply it
    return cal


def attach_calibration(out: dict, cal: Mapping[str, Any] | None) -> dict:
    """Add the calibration (:func:`calibrate`) to advise's JSON dict ``out``, in place: ``out["calibration"]``,
    ``out["expected_gain_interval_ppl"]``; ``confidence.level`` becomes the calibrated level (the layers' own
    agreement level, never evidence of being right, stays as ``confidence.agreement_level``)."""
    res = calibrate(out, cal)
    conf = out["confidence"]
    conf.setdefault("agreement_level", conf.get("level"))
    conf["level"] = res["level"]
    conf["calibrated"] = res["text"]
    out["calibration"] = res
    out["expected_gain_interval_ppl"] = res["gain_interval_ppl"]
    return out


# -- advise measured against the baselines ----------------------------------------------------------------------

# (name, key of a verified run's pick): advise as it runs by default (a stratified quarter of the layers), on every
# layer, PIH's rule, and the trivial baseline (every pruner first, as listed)
PICKERS = (("advise", "quarter"), ("advise (every layer)", "all_layers"), ("PIH", "pih"),
           ("prune first", "prune_first"))
ADVISE_TARGETS = {"hit_rate": 0.9, "regret_of_dense_on_misses": 0.01}


def pool_verified(docs: Sequence[Mapping[str, Any]]) -> dict:
    """advise against PIH and the trivial baseline over every case of ``docs`` (``experiments/advise_measure.py``
    outputs, one model each): per picker, the hit rate over the runs of decided cases (a case's best order is
    decided when its measured |mean A| is above the noise floor of its calibration seeds; three-method cases when
    every seed agrees on the best order; right: the pick is the case's best on average over its seeds), the
    regret of its misses (the run's verified perplexity of the pick minus that of the run's best) in perplexity
    and as a share of the dense perplexity on the verification tokens; advise's cost ratio (trying every order /
    advise); and advise against prune first where exactly one of them is right (sign test). The one definition
    of "advise's hit rate" the verdicts and the experiment share."""
    cases, runs = [], []
    for doc in docs:
        model = doc["provenance"]["model"]
        for c in doc["summary"]["per_case"]:
            rs = [r for r in doc["rows"] if r["case"] == c["case"]]
            decided = c["decided"] if c["decided"] is not None else len({r["best"] for r in rs}) == 1
            cases.append({"model": model, "case": c["case"], "decided": bool(decided), "A_QP_mean": c["A_QP_mean"],
                          "A_QP_floor": c["A_QP_floor"], "seeds": c["seeds"]})
            for r in rs:
                runs.append({"model": model, "case": c["case"], "seed": r["seed"], "decided": bool(decided),
                             "dense_ppl": r.get("dense_ppl"), "best": r["best"], "cost_ratio": r["cost"]["ratio"],
                             **{k: {"pick": r[k]["pick"], "right": r[k]["pick"] == c["best_on_average"],
                                    "regret": r[k]["regret"]} for _, k in PICKERS}})
    dec = [r for r in runs if r["decided"]]
    summary: dict[str, Any] = {"models": sorted({c["model"] for c in cases}), "cases": len(cases),
                               "cases_decided": sum(c["decided"] for c in cases), "runs": len(runs),
                               "runs_decided": len(dec)}
    for name, k in PICKERS:
        miss = [r for r in dec if not r[k]["right"]]
        rel = [r[k]["regret"] / r["dense_ppl"] for r in miss if r["dense_ppl"]]
        hits = sum(r[k]["right"] for r in dec)
        summary[name] = {"hit_rate_decided": hits / len(dec) if dec else None,
                         "hits": hits, "misses": len(miss),
                         "wilson95": list(wilson(hits, len(dec))) if dec else None,
                         "regret_ppl_max": max((r[k]["regret"] for r in miss), default=0.0),
                         "regret_of_dense_max": max(rel, default=0.0) if len(rel) == len(miss) else None,
                         "regret_of_dense_mean_over_misses": float(np.mean(rel)) if rel else 0.0}
    only_a = sum(r["quarter"]["right"] and not r["prune_first"]["right"] for r in dec)
    only_pf = sum(r["prune_first"]["right"] and not r["quarter"]["right"] for r in dec)
    summary["advise_vs_prune_first"] = {"only_advise": only_a, "only_prune_first": only_pf,
                                        "sign_test_p": sign_test(only_a, only_pf)}
    summary["advise_cost_ratio_median"] = float(np.median([r["cost_ratio"] for r in runs])) if runs else None
    summary["targets"] = dict(ADVISE_TARGETS)
    return {"what": "pih advise against PIH and always-prune-first on every verified case", "summary": summary,
            "cases": cases, "runs": runs}
