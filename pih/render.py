"""Text rendering of the core's results (aligned tables a person reads in a terminal or a Markdown file)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(x, spec: str = ".4g") -> str:
    """A number for a table: '-' for None/NaN, else ``format(x, spec)``."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if isinstance(x, (int, float)):
        return format(x, spec)
    return str(x)


def table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None, indent: str = "") -> list[str]:
    """Rows of strings padded to a common width per column; ``align`` one letter per column (l/r, default: r for
    every column but the first)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    n = len(header)
    align = align or ("l" + "r" * (n - 1))
    widths = [max(len(r[i]) for r in cells) for i in range(n)]

    def line(r):
        return indent + "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align,
                                                                                           strict=True)).rstrip()

    out = [line(cells[0]), indent + "  ".join("-" * w for w in widths)]
    return out + [line(r) for r in cells[1:]]


def seed_summary_lines(ss: dict, indent: str = "   ") -> list[str]:
    """The seed-level summary of a grid (``SeedSummary.to_dict()``): points, sign counts, line tests, pooled ρ."""
    out = [f"{indent}seeds {ss['seeds']}: {ss['noise_rule']}"]
    rows = []
    for p in ss["points"]:
        a = p["A_qp"]
        above = "-" if a["above_floor"] is None else ("above" if a["above_floor"] else "below")
        gap = fmt(p["gap"], "+.3f") if p["gap"] is not None else f"cens:{p['censored']}"
        rows.append([p["prune"], p["quant"], gap, fmt(a["mean"], "+.4g"), fmt(a["sd"], ".3g"), fmt(a["floor"], ".3g"),
                     above])
    out += table(["prune", "quant", "C*_P-C_Q", "mean A(Q->P)", "sd", "floor", "vs floor"], rows, "llrrrrl", indent)
    if ss.get("n_above_floor") is not None:
        out.append(f"{indent}{ss['n_above_floor']} of {ss['n_points']} points above their noise floor: quantize "
                   f"first wins at {ss['n_quantize_first_wins_above_floor']}, prune first at "
                   f"{ss['n_prune_first_wins_above_floor']}; {ss['n_censored']} with a censored CER")
    if ss.get("n_exceeding_t20_bound"):
        out.append(f"{indent}{ss['n_exceeding_t20_bound']} points where A(Q->P) exceeds M(P alone) - M(P first) "
                   "beyond the noise: no A1 + disjoint-selectivity model explains them (Theorem T2.0)")
    lines = [ln for ln in ss["lines"] if ln["test"] is not None]
    if lines:
        out.append(f"{indent}monotonicity of mean A(Q->P) in C*_P - C_Q per line (exact permutation test):")
        rows = []
        for ln in lines:
            t = ln["test"]
            fixed = ("fixed " + ln["fixed"]) if ln["along"] == "bits" else ("fixed " + ln["fixed"])
            rows.append([fixed, ln["n_points"], fmt(t["rho"], "+.2f"), fmt(t["p_increasing"], ".3f"),
                         fmt(t["p_decreasing"], ".3f"), t["direction"]])
        out += table(["line", "n", "rho", "p(incr)", "p(decr)", "verdict (alpha 0.05)"], rows, "lrrrrl", indent)
    pooled = ss.get("pooled")
    if pooled:
        lo, hi = pooled["ci"]
        per_seed = ", ".join(f"{k}: {v:+.2f}" for k, v in ss.get("pooled_by_seed", {}).items())
        if pooled["n_clusters"] < 2 or lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            ci = f"no interval: {pooled['n_clusters']} {pooled['cluster']} (a pooled figure needs two or more)"
        else:
            ci = (f"95% CI {fmt(lo, '+.2f')}..{fmt(hi, '+.2f')}, cluster bootstrap over {pooled['n_clusters']} "
                  f"{pooled['cluster']}s")
        out.append(f"{indent}pooled Spearman rho over {pooled['n_points']} point means: {pooled['value']:+.3f} "
                   f"({ci})" + (f"; per seed {per_seed}" if per_seed else ""))
    return out


# -- pih advise ------------------------------------------------------------------------------------------------
def _f(x, fmt=".4g") -> str:  # as fmt(), with non-finite values spelled out
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, fmt)


def advice_lines(out: dict, md: bool = False) -> list[str]:
    """``pih advise``'s output (its JSON dict) as lines of text, or of Markdown (``md``)."""
    c, conf, cost = out.get("cer") or [], out["confidence"], out["cost"]
    meas = out["measurement"]
    L = []
    first = {"prune": "prune first", "quantize": "quantize first"}.get(out.get("predicted_first"), "")
    b = "**" if md else ""
    L.append(f"{b}Use: {out['recommendation']}{b}" + (f"  ({first})" if first else ""))
    cal = out.get("calibration")
    if out["measurement"]["evaluations"] == 0:
        L.append("Expected gain: not computed (order only: no evaluations, no CER).")
    elif out["expected_gain_ppl"] is None:
        L.append("Expected gain: not resolved (the few-token evaluations do not rise with the layer error; raise "
                 "--eval-tokens).")
    else:
        L.append(f"Expected gain: {_f(out['expected_gain_ppl'], '.3g')} perplexity over the runner-up "
                 f"({out['runner_up']}); approximate (layer errors mapped to perplexity by a fit of the measured "
                 f"evaluations, R2 {_f(out['error_to_ppl']['r2'], '.2f')})." + _gain_interval(cal))
    if out.get("tie"):
        L.append(f"TIE: the layer-wise errors of {' and '.join(out['tie'])} are identical (the later methods change "
                 "nothing the earlier ones left); the measurement cannot choose between them.")
    agreement = (f"{conf['layers_agreeing'] * conf['n_layers']:.0f}/{conf['n_layers']} measured layers "
                 f"({conf['layers_agreeing']:.0%}) favour it, bootstrap over layers {conf['bootstrap_sign']:.2f}, "
                 f"margin {_f(conf['margin_sd'], '.3g')} per-layer sd")
    if cal is not None:
        L.append(f"How sure: {conf['level']} -- {cal['text']}. Layer agreement: {agreement}.")
    else:
        L.append(f"How sure: uncalibrated (no verified outcomes available) -- {agreement}: agreement between "
                 "layers, not evidence of being right.")
    for w in (cal or {}).get("outside_verified") or []:
        L.append(f"WARNING: outside what was verified: {w}.")
    if "verify" in out:
        v = out["verify"]
        verdict = "RIGHT" if v["prediction_right"] else f"WRONG (regret {_f(v['regret_ppl'], '.3g')} perplexity)"
        a = f"; measured A(Q->P) = {_f(v['A_QP_ppl'], '+.3g')}" if "A_QP_ppl" in v else ""
        L.append(f"Verified with the real engine on {v['eval_tokens']} tokens: best {v['best']}{a}; prediction "
                 f"{verdict}" + (f" (regret {v['regret_of_dense']:.2%} of the dense {v['dense_ppl']:.4g})"
                                 if not v["prediction_right"] and "dense_ppl" in v else "") + ".")
        base = [f"{name} {'right' if v[k + '_right'] else 'wrong (regret ' + _f(v[k + '_regret_ppl'], '.3g') + ')'}"
                for name, k in (("PIH", "pih"), ("prune first", "prune_first")) if k + "_right" in v]
        if base:
            L.append(f"Baselines on the same measurement: {'; '.join(base)}.")
    L.append("")
    dense_few = out["few_token_ppl"].get("dense")
    L.append("Orders (layer-wise error summed over the measured layers" + (
        "; perplexity predicted from it, on the few evaluation tokens' scale where the dense model has "
        f"{dense_few:.4g}" if dense_few is not None else "") + ("; measured by --verify" if "verify" in out else "")
        + "):")
    if md:
        L.append("")
        L.append("| order | layer-wise error | predicted ppl | " + ("measured ppl |" if "verify" in out else "")
                 + " PIH's pick |")
        L.append("|---|---|---|" + ("---|" if "verify" in out else "") + "---|")
    for o in out["orders"]:
        meas_ppl = out["verify"]["ppl"][o["order"]] if "verify" in out else None
        tag = ("*" if o["predicted_best"] else " ")
        if md:
            L.append(f"| {o['order']}{' (predicted best)' if o['predicted_best'] else ''} | "
                     f"{o['layerwise_error']:.5g} | {_f(o['predicted_ppl'], '.4f')} | "
                     + (f"{meas_ppl:.4f} | " if meas_ppl is not None else "") + ("yes" if o["pih_predicted"] else "")
                     + " |")
        else:
            L.append(f" {tag} {o['order']:<70} E={o['layerwise_error']:<11.5g} ppl~{_f(o['predicted_ppl'], '.4f'):<9}"
                     + (f" measured {meas_ppl:.4f}" if meas_ppl is not None else "")
                     + ("  <- PIH" if o["pih_predicted"] else ""))
    L.append("")
    if out.get("quant_curve"):
        qc = out["quant_curve"]
        L.append(f"Quantization curve ({qc['quantizer']}, {meas['eval_tokens']} tokens): "
                 + ", ".join(f"{bb} bits {p:.4g}" for bb, p in zip(qc["bits"], qc["ppl"], strict=True))
                 + ("" if qc["monotone"] else f"  (NOT monotone: {qc['violations']})"))
        for r in c:
            if r["is_C_Q"]:
                L.append(f"  {r['method']}: C_Q = {r['value']:.3g}")
            elif r["value"] is not None:
                L.append(f"  {r['method']}: CER = {r['value']:.3g} (alone: perplexity {r['ppl_alone_few_tokens']:.4g})")
            else:
                L.append(f"  {r['method']}: CER censored ({r['censored']} than the curve's edge {r['bound']:.3g})")
        agree = "agrees" if out["pih_agrees"] else "DISAGREES"
        L.append(f"PIH (weaker by CER first) would pick {out['pih_order']}: it {agree} with the layer-wise "
                 "prediction." + (f" Measured: PIH {'right' if out['verify']['pih_right'] else 'wrong'}."
                                  if "verify" in out and "pih_right" in out["verify"] else ""))
    elif meas["evaluations"] == 0:
        L.append("Order only (--order-only): no evaluations were run, so no quantization curve, no CER and no PIH "
                 "prediction were computed.")
    elif not any(m.startswith("Q[") for m in out["methods"]):
        L.append("No quantizer among the methods: no quantization curve, no CER, no PIH prediction.")
    else:
        L.append("No quantization curve (fewer than two bit widths evaluated): no CER, no PIH prediction.")
    L.append("")
    L.append(f"Measured: {meas['layers_used']} of {meas['layers_total']} linear layers ({out['weighting']} "
             f"errors), calibration {meas['calibration']}; {meas['evaluations']} evaluations of "
             f"{meas['eval_tokens']} tokens" + (" (only the measured layers compressed)"
                                                if meas.get("partial_models") else "") + ".")
    if "trying_every_order_s" in cost:
        L.append(f"Cost: advise {cost['advise_s']:.1f} s (layer-wise {cost['layerwise_s']:.1f} s, evaluations "
                 f"{cost['evals_s']:.1f} s, curve {cost['curve_s']:.1f} s) vs trying every order "
                 f"{cost['trying_every_order_s']:.1f} s, both "
                 f"measured: {cost['ratio_measured']:.1f}x cheaper. Model and data loading ({cost['setup_s']:.1f} s) "
                 "is common to both and not counted.")
    else:
        L.append(f"Cost: advise {cost['advise_s']:.1f} s (layer-wise {cost['layerwise_s']:.1f} s, evaluations "
                 f"{cost['evals_s']:.1f} s, curve {cost['curve_s']:.1f} s); trying every order: ESTIMATED "
                 f"{cost['trying_every_order_estimate_s']:.1f}"
                 f" s from this run's per-stage timings (not measured; run --verify to measure), about "
                 f"{cost['ratio_estimated']:.1f}x. Loading ({cost['setup_s']:.1f} s) not counted.")
    return L


def _gain_interval(cal: dict | None) -> str:
    """advice_lines' sentence on the expected gain's interval from the verified outcomes."""
    if not cal or cal.get("gain_interval_ppl") is None:
        return " No verified outcomes to put an interval on it."
    lo, hi = cal["gain_interval_ppl"]
    gr = cal["gain_ratio"]
    r0, r1 = cal["gain_ratio_interval"]
    return (f" From the verified outcomes: {_f(lo, '.3g')} to {_f(hi, '.3g')} (the predicted gain times the "
            f"{cal['gain_ratio_interval_kind']} {r0:.2g} to {r1:.2g} of the measured/predicted gain ratios of "
            f"{gr['n']} runs, {cal['gain_ratio_scope']}"
            + ("; below 0: the other order was better" if lo < 0 else "") + ").")


def short_label(label: str) -> str:
    """A spec label without its default parts (unstructured, per channel, asymmetric, absmax)."""
    for x in ("unstructured,", ",channel", ",asym", ",absmax"):
        label = label.replace(x, "")
    return label


def advice_text(out: dict) -> str:
    """``pih advise``'s human-readable report."""
    head = f"pih advise: {out['model']}  methods {', '.join(out['methods'])}\n"
    return head + "\n".join(advice_lines(out)) + "\n" + (f"store: {out['store']}\n" if out.get("store") else "") + (
        f"report: {out['report']}\n" if out.get("report") else "")
