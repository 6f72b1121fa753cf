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
from .metrics import QuantCurve, ratio_16_over_b
from .order import predicted_order

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
    tied = [o for o in ranked if abs(E[o] - E[best]) <= 1e-12 * max(1.0, abs(E[best]))]
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
