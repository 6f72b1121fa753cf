"""Presets behind ``pih simulate``: each runs real mechanisms on generated tensors, writes records to a store,
a Markdown report with PNG plots, and returns a JSON-ready summary.

Sizes: ``quick`` (small layers, two seeds; used by the tests) and the default (the sizes quoted in the report).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pih.errors import bad
from pih.methods import MixedPrecision, Prune, Quantize
from pih.metrics import monotonicity
from pih.records import Provenance, Record, Store

from . import assumptions as AS
from . import kuzmin
from .sweep import Grid, ModelSpec, Pairing, run_grid


@dataclass
class Size:
    shape: tuple[int, int]
    n_samples: int
    seeds: int
    ratios: tuple[float, ...]
    bits: tuple[int, ...]
    mc_n: int


QUICK = Size((32, 64), 48, 2, (0.2, 0.4, 0.6), (2, 3, 4, 6, 8), 200_000)
FULL = Size((128, 256), 256, 6, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8), (2, 3, 4, 5, 6, 8), 2_000_000)


def _size(quick: bool, seeds: int | None) -> Size:
    s = QUICK if quick else FULL
    if seeds is not None:
        if seeds < 1:
            raise bad("seeds", seeds, "must be >= 1")
        s = Size(s.shape, s.n_samples, seeds, s.ratios, s.bits, s.mc_n)
    return s


def _model(size: Size, **kw) -> ModelSpec:
    base = dict(shape=size.shape, n_samples=size.n_samples, dist="student_t", nu=4.0, act_sigma=1.0,
                act_outliers=max(1, size.shape[1] // 64))
    base.update(kw)
    return ModelSpec(**base)


def t2_stats(g: Grid, n_boot: int = 500) -> dict:
    """Monotonicity of A(Q→P) in C*_P − C_Q over the uncensored points of a grid, and the sign of A."""
    pts = g.points()
    out = {"n_points": int(len(pts["x"])), "n_censored": pts["n_censored"],
           "n_A_positive": int((g.A > 1e-12).sum()), "n_A_negative": int((g.A < -1e-12).sum()),
           "n_A_zero": int((np.abs(g.A) <= 1e-12).sum()),
           "A_min": float(np.min(g.A)), "A_max": float(np.max(g.A)),
           "quant_curve_monotone": bool(g.curve_monotone.all()),
           "mean_free_zeros_q_first": float(g.free_zeros_qf.mean())}
    if len(pts["x"]) >= 3 and np.ptp(pts["x"]) > 0 and np.ptp(pts["A"]) > 0:
        # the seeds are the independent draws (every point of a seed shares its model): resample whole seeds
        m = monotonicity(pts["x"], pts["A"], n_boot=n_boot, seed=0, clusters=pts["seed"], cluster="seed")
        out.update(spearman_rho=m.rho, rho_ci=list(m.rho_ci), concordant_fraction=m.concordant_fraction,
                   ci_resamples="seed", n_seeds=m.n_clusters)
        # sign flip: PIH predicts A < 0 for x < 0 and A > 0 for x > 0
        neg, pos = pts["x"] < 0, pts["x"] > 0
        out["mean_A_x_neg"] = float(pts["A"][neg].mean()) if neg.any() else None
        out["mean_A_x_pos"] = float(pts["A"][pos].mean()) if pos.any() else None
    else:
        out.update(spearman_rho=float("nan"), rho_ci=[float("nan")] * 2, concordant_fraction=float("nan"))
    return out


# --------------------------------------------------------------------------------------------- plots


def plot_grids(grids: list[Grid], path: Path, title: str) -> Path:
    """A(Q→P) against C*_P − C_Q, one curve per pruning ratio (mean over seeds), one panel per pairing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(grids)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, g in zip(axes.ravel(), grids, strict=False):
        x, A = g.x, g.A
        cmap = plt.get_cmap("viridis")
        for ri, r in enumerate(g.ratios):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all seeds censored at a point
                xs = np.nanmean(x[:, :, ri], axis=0)
            ys = A[:, :, ri].mean(axis=0)
            ok = np.isfinite(xs)
            if ok.any():
                order = np.argsort(xs[ok])
                ax.plot(xs[ok][order], ys[ok][order], "o-", ms=3, color=cmap(ri / max(1, len(g.ratios) - 1)),
                        label=f"p={r:g}")
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.4, ls=":")
        ax.set_title(g.pairing.name, fontsize=9)
        ax.set_xlabel("C*_P − C_Q")
        ax.set_ylabel("A(Q→P)")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / (3.6 * rows)))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------- presets


def _run_pairings(pairings, size, model, assumptions, store, progress):
    return [run_grid(p, size.ratios, size.bits, range(size.seeds), model, assumptions, store, progress)
            for p in pairings]


def _pairing_rows(grids):
    rows = []
    for g in grids:
        st = t2_stats(g)
        st["pairing"] = g.pairing.name
        st["t1_max_residual"] = float(np.abs(g.t1_residual).max())
        st["max_abs_delta_p_first"] = float(np.abs(g.delta_pf).max())
        st["max_abs_delta_q_first"] = float(np.abs(g.delta_qf).max())
        st["M_P_by_p"] = {f"{r:g}": float(g.M_P[:, ri].mean()) for ri, r in enumerate(g.ratios)}
        rows.append(st)
    return rows


def preset_kuzmin(out: Path, quick: bool, seeds, assumptions, progress, nu: float = 4.0, **_) -> dict:
    size = _size(quick, seeds)
    exact = kuzmin.exact_table()
    mc = kuzmin.monte_carlo_table(n=size.mc_n, seed=0, scales={r.bits: r.scale for r in exact})
    t_exact = kuzmin.exact_table(nu=nu)
    t_mc = kuzmin.monte_carlo_table(nu=nu, n=size.mc_n, seed=0, scales={r.bits: r.scale for r in t_exact})
    dev = max(max(abs(r.quant_snr_db - kuzmin.REFERENCE[r.bits][0]), abs(r.prune_snr_db - kuzmin.REFERENCE[r.bits][1]))
              for r in exact)
    z = max(max(abs(m["quant_snr_db"] - e.quant_snr_db) / m["quant_se_db"],
                abs(m["prune_snr_db"] - e.prune_snr_db) / m["prune_se_db"]) for m, e in zip(mc, exact, strict=True))
    store = Store(out / "store")
    prov = Provenance("sim", "N(0,1)", "analytic", "snr_db", settings={"preset": "kuzmin"})
    for r in exact:
        for spec, v in ((Quantize(r.bits, group="tensor", scale="mse"), r.quant_snr_db),
                        (Prune(r.sparsity), r.prune_snr_db)):
            rec = Record(prov, (spec,), v, {"method": "exact"})
            if not store.has(rec.key):
                store.append(rec)
    summary = {"preset": "kuzmin", "rows": [r.to_dict() for r in exact], "reference": {
        str(b): {"quant_snr_db": q, "prune_snr_db": p} for b, (q, p) in kuzmin.REFERENCE.items()},
        "max_abs_dev_from_reference_db": dev, "monte_carlo": {"n": size.mc_n, "rows": mc, "max_abs_z": z},
        "student_t": {"nu": nu, "rows": [r.to_dict() for r in t_exact], "monte_carlo": t_mc}}
    lines = ["# Kuzmin et al. baseline (simulation)", "",
             "N(0,1) weights; b-bit signed grid with the MSE-optimal step vs magnitude pruning at 1 − b/16.", "",
             "| bits | sparsity | quant SNR exact | quant SNR MC ± se | prune SNR exact | prune SNR MC ± se "
             "| reference |",
             "|---|---|---|---|---|---|---|"]
    for e, m in zip(exact, mc, strict=True):
        ref = kuzmin.REFERENCE[e.bits]
        lines.append(f"| {e.bits} | {e.sparsity:.2%} | {e.quant_snr_db:.3f} | {m['quant_snr_db']:.3f} ± "
                     f"{m['quant_se_db']:.3f} | {e.prune_snr_db:.3f} | {m['prune_snr_db']:.3f} ± {m['prune_se_db']:.3f}"
                     f" | {ref[0]} / {ref[1]} |")
    lines += ["", f"Max deviation from the reference table: {dev:.4f} dB; max |MC − exact| / se: {z:.2f}.", "",
              f"## Student-t, nu = {nu:g} (unit variance)", "", "| bits | sparsity | quant SNR | prune SNR |",
              "|---|---|---|---|"]
    lines += [f"| {r.bits} | {r.sparsity:.2%} | {r.quant_snr_db:.3f} | {r.prune_snr_db:.3f} |" for r in t_exact]
    _plot_kuzmin(exact, t_exact, nu, out / "kuzmin.png")
    lines += ["", "![SNR](kuzmin.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def _plot_kuzmin(exact, t_exact, nu, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for rows, ls, lab in ((exact, "-", "N(0,1)"), (t_exact, "--", f"t(nu={nu:g})")):
        b = [r.bits for r in rows]
        ax.plot(b, [r.quant_snr_db for r in rows], "o" + ls, label=f"quantization, {lab}")
        ax.plot(b, [r.prune_snr_db for r in rows], "s" + ls, label=f"pruning at 1-b/16, {lab}")
    ax.set_xlabel("bits")
    ax.set_ylabel("SNR (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


HARMA_CONFIGS = (
    # (name, quant group, pruning ranking scope, inside Harma's scope: one scale per ranking scope)
    ("tensor scale, tensor ranking", "tensor", "tensor", True),
    ("channel scale, row ranking", "channel", "row", True),
    ("block-16 scale, tensor ranking", 16, "tensor", False),
    ("channel scale, tensor ranking", "channel", "tensor", False),
)


def preset_harma(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    """Magnitude pruning with max-scaled (absmax, symmetric) quantization, tensor-level weight error."""
    size = _size(quick, seeds)
    store = Store(out / "store")
    a = AS.WEIGHT
    rows, grids = [], []
    for dist in ("student_t",) if quick else ("gaussian", "laplace", "student_t"):
        model = _model(size, dist=dist, nu=3.0, outlier_channels=2)
        for name, group, per, in_scope in HARMA_CONFIGS:
            pa = Pairing(f"{dist}: {name}", Prune(0.5), Quantize(4, group=group), {"per": per})
            g = run_grid(pa, size.ratios, size.bits, range(size.seeds), model, a, store, progress)
            grids.append(g)
            rows.append({"dist": dist, "config": name, "in_scope": in_scope,
                         "max_abs_excess_prune_first": float(np.abs(g.delta_pf).max()),
                         "n_quantize_first_strictly_worse": int((g.A < -1e-12).sum()),
                         "n_quantize_first_better": int((g.A > 1e-12).sum()),
                         "n_points": int(g.A.size), "max_A": float(g.A.max())})
    ins = [r for r in rows if r["in_scope"]]
    summary = {"preset": "harma", "metric": "M = -||W - W'||^2 / ||W||^2 (tensor-level weight error)",
               "max_abs_excess_prune_first": max(r["max_abs_excess_prune_first"] for r in rows),
               "n_quantize_first_strictly_worse": sum(r["n_quantize_first_strictly_worse"] for r in ins),
               "n_quantize_first_better": sum(r["n_quantize_first_better"] for r in ins),
               "scope": "top-level counts: configurations with one quantization scale per pruning ranking scope",
               "configs": rows}
    plot_grids(grids, out / "harma.png", "Harma: magnitude pruning x max-scaled quantization (weight error)")
    lines = ["# Harma et al. check (simulation)", "", summary["metric"], "",
             "| tensor | configuration | Harma's scope | max abs excess, P first | Q first worse | Q first better "
             "| points |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dist']} | {r['config']} | {r['in_scope']} | {r['max_abs_excess_prune_first']:.2e} | "
              f"{r['n_quantize_first_strictly_worse']} | {r['n_quantize_first_better']} | {r['n_points']} |"
              for r in rows]
    lines += ["", "![A vs CER gap](harma.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def disjoint_pairings() -> list[Pairing]:
    """Disjointly selective pairs (t_Q ≤ t_P): row removal with per-row quantizers; block (layer) removal."""
    return [
        Pairing("row-magnitude x RTN", Prune(0.5, structure="row"), Quantize(4)),
        Pairing("row-loss x RTN", Prune(0.5, "loss", "row"), Quantize(4)),
        Pairing("row-loss x RTN-mse-asym", Prune(0.5, "loss", "row"), Quantize(4, symmetric=False, scale="mse")),
        Pairing("row-loss x GPTQ", Prune(0.5, "loss", "row"), Quantize(4, update="gptq")),
        Pairing("row-loss x stochastic", Prune(0.5, "loss", "row"), Quantize(4, rounding="stochastic")),
        Pairing("row-loss x hadamard RTN", Prune(0.5, "loss", "row"), Quantize(4, rotation="hadamard")),
    ]


def preset_disjoint(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    size = _size(quick, seeds)
    store = Store(out / "store")
    model = _model(size)
    pairings = disjoint_pairings()
    if quick:
        pairings = [pairings[0], pairings[3]]
    grids = _run_pairings(pairings, size, model, assumptions, store, progress)
    blocks = ModelSpec(n_layers=8, shape=(size.shape[0] // 2, size.shape[1] // 2), n_samples=size.n_samples,
                       dist="student_t", layer_scales=True, act_outliers=1)
    gb = run_grid(Pairing("block-removal x RTN", Prune(0.5, "loss", "block"), Quantize(4)),
                  (0.125, 0.25, 0.375, 0.5), size.bits, range(size.seeds), blocks, assumptions, store, progress)
    grids.append(gb)
    rows = _pairing_rows(grids)
    xs = np.concatenate([g.points()["x"] for g in grids])
    As = np.concatenate([g.points()["A"] for g in grids])
    seeds = np.concatenate([g.points()["seed"] for g in grids])  # a seed's model is shared by every pairing
    m = monotonicity(xs, As, n_boot=500, seed=0, clusters=seeds, cluster="seed")
    summary = {"preset": "disjoint", "assumptions": assumptions.to_dict(),
               "t1_max_residual": max(r["t1_max_residual"] for r in rows),
               "spearman_rho": m.rho, "rho_ci": list(m.rho_ci), "ci_resamples": "seed", "n_seeds": m.n_clusters,
               "concordant_fraction": m.concordant_fraction,
               "n_points": m.n_points, "pooled_over": [g.pairing.name for g in grids], "pairings": rows}
    plot_grids(grids, out / "t2.png", f"Disjoint pairs, assumptions {assumptions.name}")
    _write_t2_report(out, "Theorems 1-2 on disjointly selective pairs", summary, rows, "t2.png")
    return summary


def survey_pairings() -> list[Pairing]:
    """Every pruner x quantizer pairing of the issue, unstructured (not disjointly selective)."""
    out = []
    for pn, P in (("magnitude", Prune(0.5)), ("wanda", Prune(0.5, "wanda")), ("sparsegpt", Prune(0.5, "sparsegpt"))):
        for qn, Q, opt in (("RTN", Quantize(4), {}), ("RTN-g32-asym-mse", Quantize(4, 32, False, "mse"), {}),
                           ("GPTQ", Quantize(4, update="gptq"), {}),
                           ("stochastic", Quantize(4, rounding="stochastic"), {}),
                           ("hadamard-RTN", Quantize(4, rotation="hadamard"), {}),
                           ("hadamard-in-quantizer", Quantize(4, rotation="hadamard"),
                            {"rotation_scope": "quantizer"})):
            out.append(Pairing(f"{pn} x {qn}", P, Q, dict(opt)))
    return out


def preset_survey(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    size = _size(quick, seeds)
    store = Store(out / "store")
    pairings = survey_pairings()
    if quick:
        pairings = pairings[:2]
    grids = _run_pairings(pairings, size, _model(size), assumptions, store, progress)
    rows = _pairing_rows(grids)
    summary = {"preset": "survey", "assumptions": assumptions.to_dict(), "pairings": rows}
    plot_grids(grids, out / "t2.png", f"All pairings, assumptions {assumptions.name}")
    _write_t2_report(out, "A(Q->P) against C*_P - C_Q for every pairing", summary, rows, "t2.png")
    return summary


def preset_interference(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    """Unstructured pruning inside shared-scale quantization groups (t_P < t_Q): Δ(p, b) and A's additivity."""
    size = _size(quick, seeds)
    store = Store(out / "store")
    a = AS.WEIGHT if assumptions is AS.A1 else assumptions
    pairings = [Pairing("magnitude x RTN-g32-asym-mse", Prune(0.5), Quantize(4, 32, False, "mse")),
                Pairing("wanda x RTN-g32-absmax", Prune(0.5, "wanda"), Quantize(4, 32)),
                Pairing("wanda x RTN-channel-mse", Prune(0.5, "wanda"), Quantize(4, scale="mse"))]
    if quick:
        pairings = pairings[:1]
    grids = _run_pairings(pairings, size, _model(size), a, store, progress)
    per = []
    for g in grids:
        d = g.delta_pf - g.delta_qf  # Δ_PQ − Δ_QP: what A(Q→P) gets beyond the disjoint decomposition
        resid = g.A - (_disjoint_A(g) + d)
        EQ = -g.M_Q  # (S, B) error of Q alone
        ratio = g.delta_pf / np.where(EQ > 0, EQ, np.nan)[:, :, None]  # Δ_PQ / E_Q(b): b-free under NOISE
        mild = g.bits >= 3
        pk = [f"{r:g}" for r in g.ratios]
        by_p = {k: float(d[:, :, ri].mean()) for ri, k in enumerate(pk)}
        spread = {k: float(np.ptp(d[:, :, ri].mean(0))) for ri, k in enumerate(pk)}
        ep = {k: float(-g.M_P[:, ri].mean()) for ri, k in enumerate(pk)}
        rat = {k: ratio[:, mild, ri].mean(0) for ri, k in enumerate(pk)}
        per.append({"pairing": g.pairing.name, "delta_by_p": by_p, "delta_spread_over_bits": spread,
                    "prune_error_by_p": ep,
                    "spread_over_prune_error_max": max(spread[k] / max(ep[k], 1e-300) for k in spread),
                    "delta_over_EQ_by_p": {k: float(np.nanmean(v)) for k, v in rat.items()},
                    "delta_over_EQ_rel_spread_b3plus": {
                        k: float(np.ptp(v) / abs(np.nanmean(v))) if np.nanmean(v) != 0 else 0.0
                        for k, v in rat.items()},
                    "additivity_max_residual": float(np.abs(resid).max()),
                    "delta_p_first_by_p": {k: float(g.delta_pf[:, :, ri].mean()) for ri, k in enumerate(pk)},
                    "delta_q_first_max_abs": float(np.abs(g.delta_qf).max())})
    main = per[0]
    summary = {"preset": "interference", "assumptions": a.to_dict(),
               "delta_definition": "Delta_order = E(actual) - E(disjoint reconstruction) (error units, relative to "
                                   "the dense output); Delta = Delta_PQ - Delta_QP, so A(Q->P) = A_disjoint + Delta",
               "pairing": main["pairing"], "delta_by_p": main["delta_by_p"],
               "delta_spread_over_bits": max(main["delta_spread_over_bits"].values()),
               "tolerance_note": "delta_spread_over_bits: max over p of (max - min over bits of the seed-mean "
                                 "Delta); compare with prune_error_by_p (spread_over_prune_error_max) and see "
                                 "delta_over_EQ_by_p for the b-free normalisation of proofs/interference.md I.4",
               "pairings": per}
    plot_grids(grids, out / "interference.png", f"Interference pairs, assumptions {a.name}")
    _plot_delta(grids, out / "delta.png")
    lines = ["# Interference (t_P < t_Q)", "", summary["delta_definition"], ""]
    for r in per:
        lines += [f"## {r['pairing']}", "", "| p | Delta (mean over b) | spread over b | pruning error | "
                  "Delta_PQ / E_Q (b >= 3) | its relative spread over b |", "|---|---|---|---|---|---|"]
        for k in r["delta_by_p"]:
            lines.append(f"| {k} | {r['delta_by_p'][k]:.3e} | {r['delta_spread_over_bits'][k]:.3e} | "
                         f"{r['prune_error_by_p'][k]:.3e} | {r['delta_over_EQ_by_p'][k]:.3e} | "
                         f"{r['delta_over_EQ_rel_spread_b3plus'][k]:.2f} |")
        lines += ["", f"Max spread over bits / pruning error: {r['spread_over_prune_error_max']:.3g}; max |Delta_QP| "
                  f"{r['delta_q_first_max_abs']:.1e}; additivity residual {r['additivity_max_residual']:.2e}.", ""]
    lines += ["![Delta](delta.png)", "", "![A](interference.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def _disjoint_A(g: Grid) -> np.ndarray:
    """A(Q→P) of the disjoint reconstructions (what Theorem 1 accounts for)."""
    return (g.M_qf + g.delta_qf) - (g.M_pf + g.delta_pf)


def _plot_delta(grids, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(4.5 * len(grids), 3.4), squeeze=False)
    for ax, g in zip(axes[0], grids, strict=True):
        d = (g.delta_pf - g.delta_qf).mean(0)
        for bi, b in enumerate(g.bits):
            ax.plot(g.ratios, d[bi], "o-", ms=3, label=f"{b:g} bits")
        ax.set_title(g.pairing.name, fontsize=9)
        ax.set_xlabel("pruning ratio p")
        ax.set_ylabel("Delta (M units)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def preset_mixed(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    """Mixed precision across layers: disjoint layer sets (Δ = 0, A = 0) and overlapping sets (progressive order)."""
    import jax
    import jax.numpy as jnp

    from . import pipeline as pl

    size = _size(quick, seeds)
    L = 8
    model = ModelSpec(n_layers=L, shape=(size.shape[0] // 2, size.shape[1] // 2), n_samples=size.n_samples,
                      dist="student_t", layer_scales=True, act_outliers=1)
    store = Store(out / "store")
    q = pl.QuantStage()
    st = pl.MixedStage(q)
    rows = []
    disjoint_delta, disjoint_A = 0.0, 0.0
    for seed in range(size.seeds):
        m = model.make(seed)
        lam = assumptions.sensitivity((L, m.W.shape[1]), seed)
        key = jax.random.PRNGKey(seed)
        dense = np.asarray(jnp.sum((m.W @ (m.X @ jnp.swapaxes(m.X, 1, 2))) * m.W, axis=2))
        sens = dense.sum(axis=1)  # layer sensitivity: output energy (HAWQ-like ordering)
        hi_layers = np.argsort(-sens)[: L // 2]
        for bh, bl in ((8, 4), (8, 3), (6, 3), (4, 2)):
            v_hi_set = np.where(np.isin(np.arange(L), hi_layers), bh, 0).astype(float)
            v_lo_set = np.where(np.isin(np.arange(L), hi_layers), 0, bl).astype(float)
            v_hi_all = np.full(L, float(bh))
            res = {}
            for name, stages_params in {
                "disjoint_hi_lo": (v_hi_set, v_lo_set), "disjoint_lo_hi": (v_lo_set, v_hi_set),
                "progressive": (v_hi_all, v_lo_set), "regressive": (v_lo_set, v_hi_all),
                "hi_alone": (v_hi_set,), "lo_alone": (v_lo_set,), "hi_all_alone": (v_hi_all,),
            }.items():
                stages = tuple(st for _ in stages_params)
                keys = jnp.stack([jax.random.fold_in(key, int(v.sum())) for v in stages_params])
                r = _run_jit(m, stages, np.concatenate(stages_params), keys, tuple(range(len(stages))))
                res[name] = (np.asarray(r.weight_err), np.asarray(r.output_err))
            M = {k: assumptions.metric(v[0], v[1], dense, None, lam) for k, v in res.items()}
            # disjoint sets: each layer carries exactly its own quantizer's error
            e_disj = res["hi_alone"][1] + res["lo_alone"][1]
            d = max(abs(assumptions.metric(res["disjoint_hi_lo"][0], e_disj, dense, None, lam) - M["disjoint_hi_lo"]),
                    abs(M["disjoint_hi_lo"] - M["disjoint_lo_hi"]))
            disjoint_delta = max(disjoint_delta, float(np.max(np.abs(res["disjoint_hi_lo"][1] - e_disj))))
            disjoint_A = max(disjoint_A, abs(M["disjoint_hi_lo"] - M["disjoint_lo_hi"]))
            rows.append({"seed": seed, "bits_hi": bh, "bits_lo": bl,
                         "A_progressive": M["progressive"] - M["regressive"],
                         "M_progressive": M["progressive"], "M_regressive": M["regressive"],
                         "delta_disjoint": d})
            prov = Provenance("sim", model.label, "synthetic", f"M[{assumptions.name}]", seed=seed,
                              calibration_size=model.n_samples, settings={"preset": "mixed-precision"})
            for name, (v1, v2) in (("progressive", (v_hi_all, v_lo_set)), ("regressive", (v_lo_set, v_hi_all))):
                specs = tuple(MixedPrecision(tuple(int(b) for b in v if b > 0)) for v in (v1, v2))
                rec = Record(prov, specs, M[name], {"bits_hi": bh, "bits_lo": bl, "order": name,
                             "layers": [np.nonzero(v)[0].tolist() for v in (v1, v2)]})
                if not store.has(rec.key):
                    store.append(rec)
    by_bits = {}
    for r in rows:
        k = f"{r['bits_hi']}->{r['bits_lo']}"
        by_bits.setdefault(k, []).append(r["A_progressive"])
    summary = {"preset": "mixed-precision", "assumptions": assumptions.to_dict(),
               "delta_disjoint_max_abs": disjoint_delta, "A_disjoint_max_abs": disjoint_A,
               "progressive": {k: {"mean_A": float(np.mean(v)), "n_progressive_better": int(np.sum(np.array(v) > 0)),
                                   "n_regressive_better": int(np.sum(np.array(v) < 0)), "n": len(v)}
                               for k, v in by_bits.items()},
               "definition": "A_progressive = M(high bits on all layers, then low bits on half) - M(low first, "
                             "then high); disjoint: high and low bits on complementary layer halves"}
    lines = ["# Mixed precision across layers", "", summary["definition"], "",
             f"Disjoint layer sets: max |Delta| = {disjoint_delta:.2e}, max |A| = {disjoint_A:.2e}.", "",
             "| high -> low | mean A(progressive) | progressive better | regressive better | n |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['mean_A']:.3e} | {v['n_progressive_better']} | {v['n_regressive_better']} | {v['n']} |"
              for k, v in summary["progressive"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def _run_jit(model, stages, params, keys, method_ids):
    from . import pipeline as pl

    return pl.run_pipeline_jit(model, stages, params, keys, method_ids=method_ids)


def _write_t2_report(out: Path, title: str, summary: dict, rows: list[dict], png: str) -> None:
    lines = [f"# {title}", "", f"Assumptions: {summary.get('assumptions', {}).get('name', '?')}.", ""]
    if "t1_max_residual" in summary:
        lines += [f"Theorem 1 max residual: {summary['t1_max_residual']:.2e}. Pooled Spearman rho of A(Q->P) in "
                  f"C*_P - C_Q: {summary['spearman_rho']:.3f} "
                  f"(95% CI {summary['rho_ci'][0]:.3f}..{summary['rho_ci'][1]:.3f}),"
                  f" concordant {summary['concordant_fraction']:.3f}, n = {summary['n_points']}.", ""]
    lines += ["| pairing | rho | 95% CI | concordant | A>0 | A<0 | A=0 | mean A (x<0) | mean A (x>0) | censored "
              "| T1 residual | free zeros (Q first) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3g}"

    for r in rows:
        lines.append(f"| {r['pairing']} | {f(r['spearman_rho'])} | {f(r['rho_ci'][0])}..{f(r['rho_ci'][1])} | "
                     f"{f(r['concordant_fraction'])} | {r['n_A_positive']} | {r['n_A_negative']} | {r['n_A_zero']} | "
                     f"{f(r.get('mean_A_x_neg'))} | {f(r.get('mean_A_x_pos'))} | {r['n_censored']} | "
                     f"{r['t1_max_residual']:.1e} | {r['mean_free_zeros_q_first']:.1f} |")
    lines += ["", "PIH predicts rho > 0 with A < 0 for x < 0 and A > 0 for x > 0. x = C*_P - C_Q with C_Q = 16/b; "
              "censored points (C*_P outside the measured curve) are left out of rho. 'T1 residual': A measured "
              "minus Theorem 1 over row units; it is a check only for disjointly selective pairs (row or block "
              "removal with per-row quantizers) and measures how far other pairs are from that decomposition.",
              "",
              "Pruning alone, mean M over seeds (rotation: the pruner acts on the rotated weights):", "",
              "| pairing | " + " | ".join(f"p={k}" for k in rows[0]["M_P_by_p"]) + " |",
              "|---|" + "---|" * len(rows[0]["M_P_by_p"])]
    lines += [f"| {r['pairing']} | " + " | ".join(f"{v:.4g}" for v in r["M_P_by_p"].values()) + " |" for r in rows]
    lines += ["", f"![A vs CER gap]({png})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def preset_multistage(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    """SparseGPT x GPTQ (and magnitude x RTN) on one layer: P->Q, Q->P, SparseGPT's joint mode, and the
    three-stage P(p/2)->Q->P(p) that splits the pruning around the quantizer."""
    import jax
    import jax.numpy as jnp

    from . import pipeline as pl

    size = _size(quick, seeds)
    model = _model(size)
    store = Store(out / "store")
    pairs = {"sparsegpt x GPTQ": (Prune(0.5, "sparsegpt"), Quantize(4, update="gptq")),
             "magnitude x RTN": (Prune(0.5), Quantize(4))}
    ratios = (0.3, 0.5, 0.7) if not quick else (0.5,)
    bits = (3, 4, 8) if not quick else (3,)
    rows = []
    for name, (P, Q) in pairs.items():
        ps, qs = pl.stage_from_spec(P)[0], pl.stage_from_spec(Q)[0]
        orders = {"P->Q": ((ps, qs), (0, 1)), "Q->P": ((qs, ps), (1, 0)), "P/2->Q->P": ((ps, qs, ps), (0, 1, 2))}
        if P.criterion == "sparsegpt":
            orders["joint"] = ((pl.JointStage(ps, qs),), ((0, 1),))
        for seed in range(size.seeds):
            m = model.make(seed)
            dense = np.asarray(jnp.sum((m.W @ m.X) ** 2, axis=2))
            lam = assumptions.sensitivity(dense.shape, seed)
            kp, kq, k2 = jax.random.split(jax.random.PRNGKey(seed), 3)
            for p in ratios:
                for b in bits:
                    params = {"P->Q": (p, b), "Q->P": (b, p), "P/2->Q->P": (p / 2, b, p), "joint": ((p, b),)}
                    keys = {"P->Q": (kp, kq), "Q->P": (kq, kp), "P/2->Q->P": (kp, kq, k2), "joint": (kp,)}
                    M = {}
                    for oname, (stages, mids) in orders.items():
                        r = pl.run_pipeline_jit(m, stages, tuple(jnp.atleast_1d(jnp.asarray(x, jnp.float64))
                                                                  for x in params[oname]),
                                                jnp.stack(keys[oname]), method_ids=mids)
                        M[oname] = assumptions.metric(np.asarray(r.weight_err), np.asarray(r.output_err), dense,
                                                      None, lam)
                        specs = {"P->Q": (P.replace(ratio=p), Q.replace(bits=b)),
                                 "Q->P": (Q.replace(bits=b), P.replace(ratio=p)),
                                 "P/2->Q->P": (P.replace(ratio=p / 2), Q.replace(bits=b), P.replace(ratio=p)),
                                 "joint": (P.replace(ratio=p), Q.replace(bits=b))}[oname]
                        prov = Provenance("sim", model.label, "synthetic", f"M[{assumptions.name}]", seed=seed,
                                          calibration_size=model.n_samples,
                                          settings={"preset": "multistage", "mode": oname})
                        rec = Record(prov, specs, M[oname], {"ratio": p, "bits": b})
                        if not store.has(rec.key):
                            store.append(rec)
                    rows.append({"pairing": name, "seed": seed, "ratio": p, "bits": b, **M})
    summary = {"preset": "multistage", "assumptions": assumptions.to_dict(), "rows": rows}
    by = {}
    for r in rows:
        k = (r["pairing"], r["ratio"], r["bits"])
        by.setdefault(k, []).append(r)
    lines = ["# Multi-stage and joint pipelines", "", "Mean M over seeds (higher is better).", "",
             "| pairing | p | b | P->Q | Q->P | P/2->Q->P | joint | best |", "|---|---|---|---|---|---|---|---|"]
    for (name, p, b), rs in by.items():
        means = {o: float(np.mean([r[o] for r in rs])) for o in ("P->Q", "Q->P", "P/2->Q->P", "joint") if o in rs[0]}
        best = max(means, key=means.get)
        cells = " | ".join(f"{means[o]:.4g}" if o in means else "-" for o in ("P->Q", "Q->P", "P/2->Q->P", "joint"))
        lines.append(f"| {name} | {p:g} | {b} | {cells} | {best} |")
    summary["best_counts"] = {}
    for rs in by.values():
        o = max((k for k in ("P->Q", "Q->P", "P/2->Q->P", "joint") if k in rs[0]),
                key=lambda k: np.mean([r[k] for r in rs]))
        summary["best_counts"][o] = summary["best_counts"].get(o, 0) + 1
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def chain_specs(quick: bool) -> dict[str, object]:
    """The chains of the ``chain`` preset: one layer (the single-layer view), a deep residual chain (as LLM
    blocks) and a deep plain chain whose gain amplifies errors layer after layer (T2.4's route to PIH)."""
    from .chain import ChainSpec

    w, n, d = (32, 128, 3) if quick else (64, 256, 6)
    return {"1 layer": ChainSpec(1, w, n, n, "gelu", True),
            f"{d} layers, residual gelu": ChainSpec(d, w, n, n, "gelu", True),
            f"{d} layers, plain tanh, gain 1.5": ChainSpec(d, w, n, n, "tanh", False, gain=1.5)}


def chain_pairings() -> dict[str, tuple[Prune, Quantize]]:
    return {"SparseGPT x GPTQ asym": (Prune(0.5, "sparsegpt"), Quantize(4, symmetric=False, update="gptq")),
            "Wanda x RTN asym": (Prune(0.5, "wanda"), Quantize(4, symmetric=False)),
            "magnitude x RTN sym": (Prune(0.5, "magnitude"), Quantize(4))}


def preset_chain(out: Path, quick: bool, seeds, assumptions, progress, **_) -> dict:
    """Multi-layer chains, sequential vs dense calibration: does an error reaching later stages give PIH's trend?

    The assumption set is not used: the metric is the chain's own output error (and, for comparison, the
    layer-wise additive error of the same compressed weights)."""
    from pih.analysis import analyze_grid

    from .chain import run_chain_grid

    size = _size(quick, seeds)
    ratios, bits = (0.2, 0.4, 0.6, 0.8), (2, 3, 4, 8)
    if quick:
        ratios, bits = (0.3, 0.6), (2, 4, 8)
    store = Store(out / "store")
    rows, plots = [], {}
    for cname, spec in chain_specs(quick).items():
        for pname, (P, Q) in chain_pairings().items():
            for calib in ("sequential", "dense"):
                recs = run_chain_grid(spec, P, Q, ratios, bits, range(size.seeds), calib, store, progress)
                for view in ("output", "layerwise"):
                    g = analyze_grid([r for r in recs if r.provenance.settings["view"] == view], n_boot=500,
                                     cluster_by="seed")
                    pts = [(r.gap, r.advantage_qp) for r in g.rows]
                    A = np.array([a for _, a in pts])
                    xs = np.array([np.nan if x is None else x for x, _ in pts])
                    row = {"chain": cname, "pairing": pname, "calibration": calib, "view": view,
                           "n_points": len(pts), "n_censored": g.n_censored,
                           "n_A_positive": int((A > 1e-12).sum()), "n_A_negative": int((A < -1e-12).sum()),
                           "A_min": float(A.min()), "A_max": float(A.max()),
                           "spearman_rho": g.stats.rho if g.stats else None,
                           "rho_ci": list(g.stats.rho_ci) if g.stats else None,
                           "mean_A_x_neg": float(A[xs < 0].mean()) if (xs < 0).any() else None,
                           "mean_A_x_pos": float(A[xs > 0].mean()) if (xs > 0).any() else None}
                    row["pih_pattern"] = bool(row["spearman_rho"] is not None and row["spearman_rho"] > 0
                                              and row["mean_A_x_neg"] is not None and row["mean_A_x_neg"] < 0
                                              and row["mean_A_x_pos"] is not None and row["mean_A_x_pos"] > 0)
                    rows.append(row)
                    if view == "output":
                        plots[(cname, pname, calib)] = [(x, a) for x, a in pts if x is not None]
    png = _plot_chain(plots, out / "chain.png")
    n_pih = sum(r["pih_pattern"] for r in rows if r["view"] == "output")
    lines = ["# Multi-layer chains: sequential vs dense calibration", "",
             f"Chains of square layers ({', '.join(chain_specs(quick))}); seeds 0..{size.seeds - 1}; ratios "
             f"{list(ratios)}, bits {list(bits)}. M = -relative error at the chain output on held-out inputs "
             "('output'), or the layer-wise additive error of the same weights on dense inputs ('layerwise'). "
             "'sequential': each layer calibrated on the outputs of the layers before it as already compressed "
             "(what GPTQ/SparseGPT/Wanda do); 'dense': on the dense chain's inputs.", "",
             f"PIH's pattern (rho > 0, mean A < 0 where C*_P < C_Q and > 0 where C*_P > C_Q) at the output: "
             f"{n_pih} of {sum(r['view'] == 'output' for r in rows)} grids.", "",
             "| chain | pairing | calibration | view | rho | 95% CI | A>0 | A<0 | mean A (x<0) | mean A (x>0) | "
             "censored | PIH pattern |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None else f"{v:.3g}"

    for r in rows:
        ci = "-" if r["rho_ci"] is None else f"{r['rho_ci'][0]:.2f}..{r['rho_ci'][1]:.2f}"
        lines.append(f"| {r['chain']} | {r['pairing']} | {r['calibration']} | {r['view']} | {f(r['spearman_rho'])} "
                     f"| {ci} | {r['n_A_positive']} | {r['n_A_negative']} | {f(r['mean_A_x_neg'])} | "
                     f"{f(r['mean_A_x_pos'])} | {r['n_censored']} | {'yes' if r['pih_pattern'] else 'no'} |")
    lines += ["", f"![A vs CER gap at the chain output]({png.name})"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"preset": "chain", "rows": rows, "n_pih_pattern_output": n_pih, "ratios": list(ratios),
            "bits": list(bits), "seeds": size.seeds}


def _plot_chain(plots: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = list(dict.fromkeys(c for c, _, _ in plots))
    pairs = list(dict.fromkeys(p for _, p, _ in plots))
    fig, axes = plt.subplots(len(chains), len(pairs), figsize=(4.4 * len(pairs), 3.2 * len(chains)), squeeze=False)
    for i, c in enumerate(chains):
        for j, p in enumerate(pairs):
            ax = axes[i, j]
            for calib, mk in (("sequential", "o"), ("dense", "x")):
                pts = plots.get((c, p, calib), [])
                if pts:
                    ax.scatter(*zip(*pts, strict=True), marker=mk, s=14, label=calib)
            ax.axhline(0, color="k", lw=0.6)
            ax.axvline(0, color="k", lw=0.4, ls=":")
            ax.set_title(f"{c}: {p}", fontsize=8)
            ax.set_xlabel("C*_P − C_Q", fontsize=8)
            ax.set_ylabel("A(Q→P)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


PRESETS: dict[str, Callable] = {
    "kuzmin": preset_kuzmin,
    "harma": preset_harma,
    "disjoint": preset_disjoint,
    "interference": preset_interference,
    "mixed-precision": preset_mixed,
    "survey": preset_survey,
    "multistage": preset_multistage,
    "chain": preset_chain,
}


def run_preset(name: str, out: str | Path, quick: bool = False, seeds: int | None = None,
               assumptions: str | AS.AssumptionSet = "A1", progress: bool = True, **kw) -> dict:
    """Run preset ``name``, writing ``out/store``, ``out/report.md``, PNGs and ``out/summary.json``."""
    if name not in PRESETS:
        raise bad("preset", name, f"must be one of {sorted(PRESETS)}")
    a = AS.get(assumptions) if isinstance(assumptions, str) else assumptions
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = PRESETS[name](out, quick=quick, seeds=seeds, assumptions=a, progress=progress, **kw)
    summary["size"] = "quick" if quick else "full"
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_jd) + "\n")
    print(f"sim: wrote {out / 'report.md'}", file=sys.stderr)
    return summary


def _jd(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
