"""Tables and plots of the bridge experiments: reads experiments/measured/<name>.json (the JSON documents that
``pih run CONFIG --format json`` printed) and writes experiments/measured/README.md and PNG plots.

    python experiments/report_bridge.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent / "measured"


def _f(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _points_table(doc) -> list[str]:
    k = doc.get("metric", "ppl")
    lines = [f"| order | pipeline | {k} | sparsity |", "|---|---|---|---|"]
    for p in doc["points"]:
        rb = f" (removed blocks {p['removed_blocks']})" if p.get("removed_blocks") else ""
        lines.append(f"| {p['order']} | {p['pipeline']}{rb} | {_f(p[k], 4)} | {_f(p.get('sparsity'))} |")
    return lines


def _trend(doc) -> list[str]:
    from pih import monotonicity

    pairs = [r for r in doc.get("pairs", []) if r.get("cer_minus_cq") is not None]
    if len(pairs) < 3:
        return []
    m = monotonicity([r["cer_minus_cq"] for r in pairs], [r["A_QP"] for r in pairs], n_boot=1000, seed=0)
    return [f"PIH trend test over the {len(pairs)} pairs with an uncensored CER: Spearman rho(CER_P − C_Q, A(Q→P)) "
            f"= {m.rho:+.3f} (95 % bootstrap CI {m.rho_ci[0]:+.3f} .. {m.rho_ci[1]:+.3f}); concordant pairs "
            f"{m.concordant_fraction:.2f}. The hypothesis predicts rho > 0 (pruning-stronger pairs favour Q first).",
            ""]


def _pairs_table(doc) -> list[str]:
    k = doc.get("metric", "ppl")
    lines = [f"| prune | bits | {k} P first | {k} Q first | A(Q→P) | CER_P | C_Q | CER_P − C_Q | T1 A(P→Q) [err] "
             "| ΔPQ | ΔQP | A(P→Q) actual [err] |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc.get("pairs", []):
        an = r.get("analysis", {})
        cer = r.get("cer_P", {})
        cer_s = _f(cer.get("value"), 2) if cer.get("value") is not None else f"censored ({cer.get('censored')})"
        lines.append(
            f"| {r['prune']} | {r['quant']} | {_f(r[k + '_P_first'], 4)} | {_f(r[k + '_Q_first'], 4)} | "
            f"{_f(r['A_QP'], 4)} | "
            f"{cer_s} | {_f(r.get('C_Q'), 2)} | {_f(r.get('cer_minus_cq'), 2)} | {_f(an.get('A_PQ_t1'), 1)} | "
            f"{_f(an.get('delta_PQ'), 1)} | {_f(an.get('delta_QP'), 1)} | {_f(an.get('A_PQ_error_actual'), 1)} |")
    return lines


def _plot_trend(doc, path: Path) -> None:
    pairs = doc.get("pairs", [])
    if not pairs:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ratios = sorted({r["prune"] for r in pairs})
    for p in ratios:
        rs = sorted((r for r in pairs if r["prune"] == p), key=lambda r: r["quant"])
        axes[0].plot([r["quant"] for r in rs], [r["A_QP"] for r in rs], marker="o", label=f"p={p}")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("bits")
    axes[0].set_ylabel("A(Q→P) = M(Q first) − M(P first)")
    axes[0].legend()
    axes[0].set_title(doc["experiment"])
    xs = [r["cer_minus_cq"] for r in pairs if r.get("cer_minus_cq") is not None]
    ys = [r["A_QP"] for r in pairs if r.get("cer_minus_cq") is not None]
    axes[1].scatter(xs, ys)
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("CER_P − C_Q (uncensored pairs only)")
    axes[1].set_ylabel("A(Q→P)")
    axes[1].set_title(f"{len(xs)} of {len(pairs)} pairs have an uncensored CER")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(HERE.glob("*.json")) if p.stem != "fidelity"}
    # only `pih run` summaries (GPU checks, compare and advise outputs have their own formats and notes)
    docs = {k: d for k, d in docs.items() if isinstance(d, dict) and "provenance" in d and "points" in d}
    out = ["# Bridge results (measured; regenerate with `python experiments/report_bridge.py`)", ""]
    fid = HERE / "fidelity.json"
    if fid.exists():
        out += ["## Fidelity against the reference implementations", "",
                "| method | spec | reference ppl | pih ppl | relative difference |", "|---|---|---|---|---|"]
        for r in json.loads(fid.read_text())["results"]:
            out.append(f"| {r['method']} | {r['spec']} | {r['reference']:.4f} | {r['pih']:.4f} | "
                       f"{100 * r['rel_diff']:+.3f}% |")
        out.append("")
    for name, doc in docs.items():
        prov = doc["provenance"]
        out += [f"## {name}", "", f"model `{prov['model']}`, data `{prov['data']}`, seqlen {prov['seqlen']}, "
                f"eval tokens {prov['settings'].get('eval_tokens')}, calibration `{prov['calibration']}` × "
                f"{prov['calibration_size']}, seed {prov['seed']}, settings `{json.dumps(prov['settings']['bridge'])}`"
                f"{', rotated' if prov['settings'].get('rotate') else ''}.", ""]
        for n in doc.get("notes", []) + ([doc["note"]] if doc.get("note") else []):
            out += [f"Note: {n}", ""]
        out += _points_table(doc) + [""]
        if doc.get("pairs"):
            out += _pairs_table(doc) + [""] + _trend(doc)
            png = HERE / f"{name}.png"
            _plot_trend(doc, png)
            out += [f"![{name}]({png.name})", ""]
    (HERE / "README.md").write_text("\n".join(out) + "\n")
    print(f"wrote {HERE / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
