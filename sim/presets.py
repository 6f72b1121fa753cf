"""Presets behind ``pih simulate``: each defines its experiment, runs it through the one grid path (tasks ->
``pih.run_sweep`` -> records in ``OUT/store``, analysed by ``pih.analyze_grid``) and returns plain data, a
:class:`PresetResult` (the JSON summary, the figures' data, what the report says). :mod:`pih.render_plots` draws
every report and plot from that data; :func:`run_preset` writes both.

Sizes: ``quick`` (small layers, two seeds; used by the tests) and the default (the sizes quoted in the report).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pih.analysis import order_advantage_of
from pih.errors import bad
from pih.methods import Joint, MixedPrecision, Prune, Quantize
from pih.metrics import monotonicity
from pih.records import Provenance, Record, Store, Task, grid_role, run_sweep

from . import assumptions as AS
from . import kuzmin
from . import pipeline as pl
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


@dataclass
class PresetResult:
    """What a preset found, as data: ``summary`` (JSON-ready, ``summary.json``), ``figures`` (PNG file name ->
    the figure's data) and ``report`` (what the Markdown report needs beyond the summary)."""

    name: str
    summary: dict
    figures: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)


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


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def t2_stats(g: Grid) -> dict:
    """The sign counts of A(Q→P) over a grid and the monotonicity of A in C*_P − C_Q over its uncensored points
    (``g.analysis.stats``: ``pih.analyze_grid``'s, the interval resampling whole seeds)."""
    pts = g.points()
    out = {"n_points": int(len(pts["x"])), "n_censored": pts["n_censored"],
           "n_A_positive": int((g.A > 0).sum()), "n_A_negative": int((g.A < 0).sum()),
           "n_A_zero": int((g.A == 0).sum()),  # A is exactly 0 at round-off (pih.metrics.ROUNDOFF)
           "A_min": float(np.min(g.A)), "A_max": float(np.max(g.A)),
           "quant_curve_monotone": bool(g.curve_monotone.all()),
           "mean_free_zeros_q_first": float(g.free_zeros_qf.mean())}
    st = g.analysis.stats if g.analysis is not None else None
    if st is not None and len(pts["x"]) >= 3 and np.ptp(pts["x"]) > 0 and np.ptp(pts["A"]) > 0:
        out.update(spearman_rho=st.rho, rho_ci=list(st.rho_ci), concordant_fraction=st.concordant_fraction,
                   ci_resamples=st.cluster, n_seeds=st.n_clusters)
        # sign flip: PIH predicts A < 0 for x < 0 and A > 0 for x > 0
        neg, pos = pts["x"] < 0, pts["x"] > 0
        out["mean_A_x_neg"] = float(pts["A"][neg].mean()) if neg.any() else None
        out["mean_A_x_pos"] = float(pts["A"][pos].mean()) if pos.any() else None
    else:
        out.update(spearman_rho=float("nan"), rho_ci=[float("nan")] * 2, concordant_fraction=float("nan"))
    return out


def gap_figure(grids: list[Grid], title: str) -> dict:
    """A(Q→P) against C*_P − C_Q, one line per pruning ratio (means over seeds; each point with its bit width),
    one panel per pairing."""
    panels = []
    for g in grids:
        lines = []
        for ri, r in enumerate(g.ratios):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all seeds censored at a point
                xs = np.nanmean(g.x[:, :, ri], axis=0)
            ys = g.A[:, :, ri].mean(axis=0)
            ok = np.isfinite(xs)
            order = np.argsort(xs[ok])
            lines.append({"label": f"p={r:g}", "key": float(r), "x": xs[ok][order].tolist(),
                          "y": ys[ok][order].tolist(), "bits": g.bits[ok][order].astype(int).tolist()})
        panels.append({"title": g.pairing.name, "lines": lines})
    return {"kind": "gap", "title": title, "panels": panels}


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


def preset_kuzmin(out: Path, quick: bool, seeds, assumptions, progress, nu: float = 4.0, **_) -> PresetResult:
    size = _size(quick, seeds)
    exact = kuzmin.exact_table()
    mc = kuzmin.monte_carlo_table(n=size.mc_n, seed=0, scales={r.bits: r.scale for r in exact})
    t_exact = kuzmin.exact_table(nu=nu)
    t_mc = kuzmin.monte_carlo_table(nu=nu, n=size.mc_n, seed=0, scales={r.bits: r.scale for r in t_exact})
    dev = max(max(abs(r.quant_snr_db - kuzmin.REFERENCE[r.bits][0]), abs(r.prune_snr_db - kuzmin.REFERENCE[r.bits][1]))
              for r in exact)
    z = max(max(abs(m["quant_snr_db"] - e.quant_snr_db) / m["quant_se_db"],
                abs(m["prune_snr_db"] - e.prune_snr_db) / m["prune_se_db"]) for m, e in zip(mc, exact, strict=True))
    prov = Provenance("sim", "N(0,1)", "analytic (exact integration)", "snr_db", settings={"preset": "kuzmin"})
    values = {}
    for r in exact:  # the grid the paper's table reads: b-bit MSE-scaled quantization, magnitude pruning at 1 - b/16
        values[(Quantize(r.bits, group="tensor", scale="mse"),)] = r.quant_snr_db
        values[(Prune(r.sparsity),)] = r.prune_snr_db
    tasks = [Task(prov, pipe) for pipe in values]
    run_sweep(Store(out / "store"), tasks, lambda t: Record(t.provenance, t.pipeline, values[t.pipeline]),
              progress=False, desc="kuzmin")
    summary = {"preset": "kuzmin", "rows": [r.to_dict() for r in exact], "reference": {
        str(b): {"quant_snr_db": q, "prune_snr_db": p} for b, (q, p) in kuzmin.REFERENCE.items()},
        "max_abs_dev_from_reference_db": dev, "monte_carlo": {"n": size.mc_n, "rows": mc, "max_abs_z": z},
        "student_t": {"nu": nu, "rows": [r.to_dict() for r in t_exact], "monte_carlo": t_mc}}
    series = [{"label": lab, "style": ls, "bits": [r.bits for r in rows], "quant": [r.quant_snr_db for r in rows],
               "prune": [r.prune_snr_db for r in rows]} for rows, ls, lab in ((exact, "-", "N(0,1)"),
                                                                             (t_exact, "--", f"t(nu={nu:g})"))]
    return PresetResult("kuzmin", summary, {"kuzmin.png": {"kind": "snr", "series": series}}, {"nu": nu})


HARMA_CONFIGS = (
    # (name, quant group, pruning ranking scope, inside Harma's scope: one scale per ranking scope)
    ("tensor scale, tensor ranking", "tensor", "tensor", True),
    ("channel scale, row ranking", "channel", "row", True),
    ("block-16 scale, tensor ranking", 16, "tensor", False),
    ("channel scale, tensor ranking", "channel", "tensor", False),
)


def preset_harma(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
    """Magnitude pruning with max-scaled (absmax, symmetric, odd: Q(−x) = −Q(x)) quantization, tensor-level weight
    error."""
    size = _size(quick, seeds)
    store = Store(out / "store")
    a = AS.WEIGHT
    rows, grids = [], []
    for dist in ("student_t",) if quick else ("gaussian", "laplace", "student_t"):
        model = _model(size, dist=dist, nu=3.0, outlier_channels=2)
        for name, group, per, in_scope in HARMA_CONFIGS:
            pa = Pairing(f"{dist}: {name}", Prune(0.5), Quantize(4, group=group, grid="odd"), {"per": per})
            g = run_grid(pa, size.ratios, size.bits, range(size.seeds), model, a, store, progress)
            grids.append(g)
            rows.append({"dist": dist, "config": name, "in_scope": in_scope,
                         "max_abs_excess_prune_first": float(np.abs(g.delta_pf).max()),
                         "n_quantize_first_strictly_worse": int((g.A < 0).sum()),
                         "n_quantize_first_better": int((g.A > 0).sum()),
                         "n_points": int(g.A.size), "max_A": float(g.A.max())})
    ins = [r for r in rows if r["in_scope"]]
    summary = {"preset": "harma", "metric": "M = -||W - W'||^2 / ||W||^2 (tensor-level weight error)",
               "max_abs_excess_prune_first": max(r["max_abs_excess_prune_first"] for r in rows),
               "n_quantize_first_strictly_worse": sum(r["n_quantize_first_strictly_worse"] for r in ins),
               "n_quantize_first_better": sum(r["n_quantize_first_better"] for r in ins),
               "scope": "top-level counts: configurations with one quantization scale per pruning ranking scope",
               "configs": rows}
    fig = gap_figure(grids, "Harma: magnitude pruning x max-scaled quantization (weight error); Harma's scope: one "
                            "quantization scale per pruning comparison group")
    fig["scope"], fig["columns"] = "Harma", len(HARMA_CONFIGS)  # one row per weight law
    for panel, row in zip(fig["panels"], rows, strict=True):
        panel["in_scope"] = row["in_scope"]
    return PresetResult("harma", summary, {"harma.png": fig})


def disjoint_pairings() -> list[Pairing]:
    """Disjointly selective pairs (t_Q ≤ t_P): row removal with per-row quantizers; block (layer) removal."""
    return [
        Pairing("row-magnitude x RTN", Prune(0.5, structure="row"), Quantize(4, grid="odd")),
        Pairing("row-loss x RTN", Prune(0.5, "loss", "row"), Quantize(4, grid="odd")),
        Pairing("row-loss x RTN-mse-asym", Prune(0.5, "loss", "row"), Quantize(4, symmetric=False, scale="mse")),
        Pairing("row-loss x GPTQ", Prune(0.5, "loss", "row"), Quantize(4, update="gptq", grid="odd")),
        Pairing("row-loss x stochastic", Prune(0.5, "loss", "row"), Quantize(4, rounding="stochastic", grid="odd")),
        Pairing("row-loss x hadamard RTN", Prune(0.5, "loss", "row"), Quantize(4, rotation="hadamard", grid="odd")),
    ]


def preset_disjoint(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
    size = _size(quick, seeds)
    store = Store(out / "store")
    model = _model(size)
    pairings = disjoint_pairings()
    if quick:
        pairings = [pairings[0], pairings[3]]
    grids = _run_pairings(pairings, size, model, assumptions, store, progress)
    blocks = ModelSpec(n_layers=8, shape=(size.shape[0] // 2, size.shape[1] // 2), n_samples=size.n_samples,
                       dist="student_t", layer_scales=True, act_outliers=1)
    gb = run_grid(Pairing("block-removal x RTN", Prune(0.5, "loss", "block"), Quantize(4, grid="odd")),
                  (0.125, 0.25, 0.375, 0.5), size.bits, range(size.seeds), blocks, assumptions, store, progress)
    grids.append(gb)
    rows = _pairing_rows(grids)
    pts = [g.points() for g in grids]
    # a seed's model is shared by every pairing: the pooled interval resamples whole seeds
    m = monotonicity(np.concatenate([p["x"] for p in pts]), np.concatenate([p["A"] for p in pts]), n_boot=500,
                     seed=0, clusters=np.concatenate([p["seed"] for p in pts]), cluster="seed")
    summary = {"preset": "disjoint", "assumptions": assumptions.to_dict(),
               "t1_max_residual": max(r["t1_max_residual"] for r in rows),
               "spearman_rho": m.rho, "rho_ci": list(m.rho_ci), "ci_resamples": "seed", "n_seeds": m.n_clusters,
               "concordant_fraction": m.concordant_fraction,
               "n_points": m.n_points, "pooled_over": [g.pairing.name for g in grids], "pairings": rows}
    fig = gap_figure(grids, f"Disjoint pairs, assumptions {assumptions.name}")
    return PresetResult("disjoint", summary, {"t2.png": fig},
                        {"title": "Theorems 1-2 on disjointly selective pairs", "png": "t2.png"})


def survey_pairings() -> list[Pairing]:
    """Every pruner x quantizer pairing of the issue, unstructured (not disjointly selective)."""
    out = []
    for pn, P in (("magnitude", Prune(0.5)), ("wanda", Prune(0.5, "wanda")), ("sparsegpt", Prune(0.5, "sparsegpt"))):
        for qn, Q, opt in (("RTN", Quantize(4, grid="odd"), {}),
                           ("RTN-g32-asym-mse", Quantize(4, 32, False, "mse"), {}),
                           ("GPTQ", Quantize(4, update="gptq", grid="odd"), {}),
                           ("stochastic", Quantize(4, rounding="stochastic", grid="odd"), {}),
                           ("hadamard-RTN", Quantize(4, rotation="hadamard", grid="odd"), {}),
                           ("hadamard-in-quantizer", Quantize(4, rotation="hadamard", grid="odd"),
                            {"rotation_scope": "quantizer"})):
            out.append(Pairing(f"{pn} x {qn}", P, Q, dict(opt)))
    return out


def preset_survey(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
    size = _size(quick, seeds)
    store = Store(out / "store")
    pairings = survey_pairings()
    if quick:
        pairings = pairings[:2]
    grids = _run_pairings(pairings, size, _model(size), assumptions, store, progress)
    rows = _pairing_rows(grids)
    summary = {"preset": "survey", "assumptions": assumptions.to_dict(), "pairings": rows}
    fig = gap_figure(grids, f"All pairings, assumptions {assumptions.name}")
    return PresetResult("survey", summary, {"t2.png": fig},
                        {"title": "A(Q->P) against C*_P - C_Q for every pairing", "png": "t2.png"})


def preset_interference(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
    """Unstructured pruning inside shared-scale quantization groups (t_P < t_Q): Δ(p, b) and A's additivity."""
    size = _size(quick, seeds)
    store = Store(out / "store")
    a = AS.WEIGHT if assumptions is AS.A1 else assumptions
    pairings = [Pairing("magnitude x RTN-g32-asym-mse", Prune(0.5), Quantize(4, 32, False, "mse")),
                Pairing("wanda x RTN-g32-absmax", Prune(0.5, "wanda"), Quantize(4, 32, grid="odd")),
                Pairing("wanda x RTN-channel-mse", Prune(0.5, "wanda"), Quantize(4, scale="mse", grid="odd"))]
    if quick:
        pairings = pairings[:1]
    grids = _run_pairings(pairings, size, _model(size), a, store, progress)
    per = []
    for g in grids:
        d = g.delta_pf - g.delta_qf  # Δ_PQ − Δ_QP: what A(Q→P) gets beyond the disjoint decomposition
        a_disjoint = (g.M_qf + g.delta_qf) - (g.M_pf + g.delta_pf)  # A of the disjoint reconstructions (T1)
        resid = g.A - (a_disjoint + d)
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
    delta = {"kind": "lines", "title": "Delta = Delta_PQ - Delta_QP (mean over seeds)", "xlabel": "pruning ratio p",
             "ylabel": "Delta (M units)",
             "panels": [{"title": g.pairing.name,
                         "lines": [{"label": f"{b:g} bits", "key": float(b), "x": g.ratios.tolist(),
                                    "y": (g.delta_pf - g.delta_qf).mean(0)[bi].tolist(),
                                    "bits": [int(b)] * len(g.ratios)} for bi, b in enumerate(g.bits)]}
                        for g in grids]}
    return PresetResult("interference", summary,
                        {"delta.png": delta, "interference.png": gap_figure(grids, f"Interference pairs, "
                                                                                   f"assumptions {a.name}")})


# -- mixed precision: named pipelines of MixedPrecision stages ------------------------------------------------------
MIXED_BITS = ((8, 4), (8, 3), (6, 3), (4, 2))
MIXED_ORDERS = ("disjoint_hi_lo", "disjoint_lo_hi", "progressive", "regressive", "hi_alone", "lo_alone",
                "hi_all_alone")
MIXED_Q = MixedPrecision((pl.CANONICAL_BITS,), grid="odd")  # per-channel absmax on the odd grid


def _mixed_vectors(hi_layers, L: int, bh: int, bl: int) -> dict[str, tuple]:
    """Per named pipeline, one bit width per layer and stage (0: the layer untouched)."""
    hi = np.isin(np.arange(L), hi_layers)
    v_hi_set, v_lo_set = np.where(hi, bh, 0).astype(float), np.where(hi, 0, bl).astype(float)
    v_hi_all = np.full(L, float(bh))
    return {"disjoint_hi_lo": (v_hi_set, v_lo_set), "disjoint_lo_hi": (v_lo_set, v_hi_set),
            "progressive": (v_hi_all, v_lo_set), "regressive": (v_lo_set, v_hi_all), "hi_alone": (v_hi_set,),
            "lo_alone": (v_lo_set,), "hi_all_alone": (v_hi_all,)}


def _mixed_layout(m):
    """(dense per-row output energy, the layers of highest output energy: high bits; HAWQ-like)."""
    dense = np.asarray(jnp.sum((m.W @ (m.X @ jnp.swapaxes(m.X, 1, 2))) * m.W, axis=2))
    return dense, np.argsort(-dense.sum(axis=1))[: m.W.shape[0] // 2]


def _mixed_seed(model: ModelSpec, assumptions, tasks: list[Task]) -> list[Record]:
    """The records of one seed's named mixed-precision pipelines (the hi/lo layer sets from the seed's model)."""
    seed = tasks[0].provenance.seed
    m = model.make(seed)
    L = m.W.shape[0]
    dense, hi_layers = _mixed_layout(m)
    lam = assumptions.sensitivity((L, m.W.shape[1]), seed)
    key = jax.random.PRNGKey(seed)
    runs: dict[tuple, tuple] = {}

    def run(order: str, bh: int, bl: int):
        if (order, bh, bl) not in runs:
            vs = _mixed_vectors(hi_layers, L, bh, bl)[order]
            keys = jnp.stack([jax.random.fold_in(key, int(v.sum())) for v in vs])
            r = pl.run_pipeline_jit(m, (MIXED_Q,) * len(vs), np.concatenate(vs), keys, method_ids=tuple(range(len(vs))))
            runs[(order, bh, bl)] = (np.asarray(r.weight_err), np.asarray(r.output_err), vs)
        return runs[(order, bh, bl)]

    def metric(we, eo):
        return assumptions.metric(we, eo, dense, None, lam)

    out = []
    for t in tasks:
        order, bits = t.point["name"].split(" ")
        bh, bl = (int(b) for b in bits.split("->"))
        we, eo, vs = run(order, bh, bl)
        extras = {"layers": [np.nonzero(v)[0].tolist() for v in vs]}
        if order == "disjoint_hi_lo":  # each layer carries exactly its own quantizer's error?
            e_disj = run("hi_alone", bh, bl)[1] + run("lo_alone", bh, bl)[1]
            extras["M_of_the_sum_of_alone_errors"] = metric(we, e_disj)
            extras["max_abs_row_delta"] = float(np.max(np.abs(eo - e_disj)))
        out.append(Record(t.provenance, t.pipeline, metric(we, eo), t.point, extras))
    return out


def preset_mixed(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
    """Mixed precision across layers: disjoint layer sets (Δ = 0, A = 0) and overlapping sets (progressive order)."""
    size = _size(quick, seeds)
    L = 8
    model = ModelSpec(n_layers=L, shape=(size.shape[0] // 2, size.shape[1] // 2), n_samples=size.n_samples,
                      dist="student_t", layer_scales=True, act_outliers=1)
    tasks = []
    for seed in range(size.seeds):
        prov = Provenance("sim", model.label, "synthetic", f"M[{assumptions.name}]", seed=seed,
                          calibration_size=model.n_samples,
                          settings={"preset": "mixed-precision", "model": model.to_dict(),
                                    "assumptions": assumptions.to_dict()})
        hi_layers = _mixed_layout(model.make(seed))[1]
        for bh, bl in MIXED_BITS:
            for order, vs in _mixed_vectors(hi_layers, L, bh, bl).items():
                specs = tuple(MIXED_Q.replace(bits=tuple(int(b) for b in v if b > 0)) for v in vs)
                tasks.append(Task(prov, specs, {"name": f"{order} {bh}->{bl}"}))
    recs = run_sweep(Store(out / "store"), tasks, compute_group=partial(_mixed_seed, model, assumptions),
                     group_by=lambda t: t.provenance.seed, progress=progress, desc="sim mixed-precision")
    by = {(r.provenance.seed, r.point["name"]): r for r in recs}
    rows = []
    disjoint_delta, disjoint_A = 0.0, 0.0
    for seed in range(size.seeds):
        for bh, bl in MIXED_BITS:
            rec = {o: by[(seed, f"{o} {bh}->{bl}")] for o in MIXED_ORDERS}
            a_disjoint = abs(order_advantage_of(rec["disjoint_hi_lo"], rec["disjoint_lo_hi"]))
            dhl = rec["disjoint_hi_lo"]
            d = max(abs(dhl.extras["M_of_the_sum_of_alone_errors"] - dhl.value), a_disjoint)
            disjoint_delta = max(disjoint_delta, dhl.extras["max_abs_row_delta"])
            disjoint_A = max(disjoint_A, a_disjoint)
            rows.append({"seed": seed, "bits_hi": bh, "bits_lo": bl,
                         "A_progressive": order_advantage_of(rec["progressive"], rec["regressive"]),
                         "M_progressive": rec["progressive"].value, "M_regressive": rec["regressive"].value,
                         "delta_disjoint": d})
    by_bits: dict[str, list[float]] = {}
    for r in rows:
        by_bits.setdefault(f"{r['bits_hi']}->{r['bits_lo']}", []).append(r["A_progressive"])
    summary = {"preset": "mixed-precision", "assumptions": assumptions.to_dict(),
               "delta_disjoint_max_abs": disjoint_delta, "A_disjoint_max_abs": disjoint_A,
               "progressive": {k: {"mean_A": float(np.mean(v)), "n_progressive_better": int(np.sum(np.array(v) > 0)),
                                   "n_regressive_better": int(np.sum(np.array(v) < 0)), "n": len(v)}
                               for k, v in by_bits.items()},
               "definition": "A_progressive = M(high bits on all layers, then low bits on half) - M(low first, "
                             "then high); disjoint: high and low bits on complementary layer halves"}
    return PresetResult("mixed-precision", summary)


# -- multi-stage and joint pipelines ---------------------------------------------------------------------------------
MULTISTAGE_ORDERS = {  # name -> (pipeline of (P, Q) at (p, b), method ids: the key each stage draws with)
    "P->Q": (lambda P, Q, p, b: (P.replace(ratio=p), Q.replace(bits=b)), (0, 1)),
    "Q->P": (lambda P, Q, p, b: (Q.replace(bits=b), P.replace(ratio=p)), (1, 0)),
    "P/2->Q->P": (lambda P, Q, p, b: (P.replace(ratio=p / 2), Q.replace(bits=b), P.replace(ratio=p)), (0, 1, 2)),
    "joint": (lambda P, Q, p, b: (Joint(P.replace(ratio=p), Q.replace(bits=b)),), ((0, 1),)),
}


def _multistage_order(pipeline) -> str:
    if len(pipeline) == 1:
        return "joint"
    return {"P->Q": "P->Q", "Q->P": "Q->P"}.get(grid_role(pipeline), "P/2->Q->P")


def _multistage_seed(model: ModelSpec, assumptions, tasks: list[Task]) -> list[Record]:
    """One seed's records: each named order of (P, Q) at (p, b); the stage keys by method (P, Q, the second P)."""
    seed = tasks[0].provenance.seed
    m = model.make(seed)
    dense = np.asarray(jnp.sum((m.W @ m.X) ** 2, axis=2))
    lam = assumptions.sensitivity(dense.shape, seed)
    mkeys = jax.random.split(jax.random.PRNGKey(seed), 3)
    out = []
    for t in tasks:
        ids = MULTISTAGE_ORDERS[_multistage_order(t.pipeline)][1]
        stages, values = zip(*(pl.stage_from_spec(s) for s in t.pipeline), strict=True)
        keys = jnp.stack([mkeys[i[0] if isinstance(i, tuple) else i] for i in ids])
        r = pl.run_pipeline_jit(m, stages, tuple(jnp.asarray(v, jnp.float64) for v in values), keys, method_ids=ids)
        M = assumptions.metric(np.asarray(r.weight_err), np.asarray(r.output_err), dense,
                               np.asarray(jnp.sum(m.W**2, axis=2)), lam)
        out.append(Record(t.provenance, t.pipeline, M))
    return out


def preset_multistage(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
    """SparseGPT x GPTQ (and magnitude x RTN) on one layer: P->Q, Q->P, SparseGPT's joint mode, and the
    three-stage P(p/2)->Q->P(p) that splits the pruning around the quantizer."""
    size = _size(quick, seeds)
    model = _model(size)
    store = Store(out / "store")
    pairs = {"sparsegpt x GPTQ": (Prune(0.5, "sparsegpt"), Quantize(4, update="gptq", grid="odd")),
             "magnitude x RTN": (Prune(0.5), Quantize(4, grid="odd"))}
    ratios = (0.3, 0.5, 0.7) if not quick else (0.5,)
    bits = (3, 4, 8) if not quick else (3,)
    rows = []
    for name, (P, Q) in pairs.items():
        tasks, where = [], []
        for seed in range(size.seeds):
            prov = Provenance("sim", model.label, "synthetic", f"M[{assumptions.name}]", seed=seed,
                              calibration_size=model.n_samples,
                              settings={"preset": "multistage", "pairing": name, "model": model.to_dict(),
                                        "assumptions": assumptions.to_dict()})
            for p in ratios:
                for b in bits:
                    for order, (make, _) in MULTISTAGE_ORDERS.items():
                        if order == "joint" and P.criterion != "sparsegpt":
                            continue
                        tasks.append(Task(prov, make(P, Q, p, b)))
                        where.append((seed, p, b, order))
        recs = run_sweep(store, tasks, compute_group=partial(_multistage_seed, model, assumptions),
                         group_by=lambda t: t.provenance.seed, progress=progress, desc=f"sim multistage {name}")
        got: dict[tuple, dict] = {}
        for (seed, p, b, order), r in zip(where, recs, strict=True):
            got.setdefault((seed, p, b), {})[order] = r.value
        rows += [{"pairing": name, "seed": seed, "ratio": p, "bits": b, **M} for (seed, p, b), M in got.items()]
    summary = {"preset": "multistage", "assumptions": assumptions.to_dict(), "rows": rows}
    by: dict[tuple, list] = {}
    for r in rows:
        by.setdefault((r["pairing"], r["ratio"], r["bits"]), []).append(r)
    summary["best_counts"] = {}
    for rs in by.values():
        o = max((k for k in MULTISTAGE_ORDERS if k in rs[0]), key=lambda k: np.mean([r[k] for r in rs]))
        summary["best_counts"][o] = summary["best_counts"].get(o, 0) + 1
    return PresetResult("multistage", summary, report={"orders": list(MULTISTAGE_ORDERS)})


# -- chains ----------------------------------------------------------------------------------------------------------
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
            "magnitude x RTN sym": (Prune(0.5, "magnitude"), Quantize(4, grid="odd"))}


def preset_chain(out: Path, quick: bool, seeds, assumptions, progress, **_) -> PresetResult:
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
    rows, panels = [], {}
    for cname, spec in chain_specs(quick).items():
        for pname, (P, Q) in chain_pairings().items():
            for calib in ("sequential", "dense"):
                recs = run_chain_grid(spec, P, Q, ratios, bits, range(size.seeds), calib, store, progress)
                for view in ("output", "layerwise"):
                    g = analyze_grid([r for r in recs if r.provenance.settings["view"] == view], n_boot=500,
                                     cluster_by="seed")
                    A = np.array([r.advantage_qp for r in g.rows])
                    xs = np.array([_nan(r.gap) for r in g.rows])
                    row = {"chain": cname, "pairing": pname, "calibration": calib, "view": view,
                           "n_points": len(g.rows), "n_censored": g.n_censored,
                           "n_A_positive": int((A > 0).sum()), "n_A_negative": int((A < 0).sum()),
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
                        ok = [r for r in g.rows if r.gap is not None]
                        panel = panels.setdefault((cname, pname), {"title": f"{cname}: {pname}", "lines": []})
                        panel["lines"].append({"label": calib, "key": calib, "x": [r.gap for r in ok],
                                               "y": [r.advantage_qp for r in ok], "bits": [r.quant.bits for r in ok]})
    n_pih = sum(r["pih_pattern"] for r in rows if r["view"] == "output")
    summary = {"preset": "chain", "rows": rows, "n_pih_pattern_output": n_pih, "ratios": list(ratios),
               "bits": list(bits), "seeds": size.seeds}
    fig = {"kind": "scatter", "title": "A(Q->P) at the chain output", "columns": len(chain_pairings()),
           "panels": list(panels.values())}
    return PresetResult("chain", summary, {"chain.png": fig}, {"chains": list(chain_specs(quick))})


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
    """Run preset ``name``, writing ``out/store``, ``out/summary.json``, and (:mod:`pih.render_plots`)
    ``out/report.md`` and PNGs; returns the summary."""
    from pih import render_plots

    if name not in PRESETS:
        raise bad("preset", name, f"must be one of {sorted(PRESETS)}")
    a = AS.get(assumptions) if isinstance(assumptions, str) else assumptions
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = PRESETS[name](out, quick=quick, seeds=seeds, assumptions=a, progress=progress, **kw)
    res.summary["size"] = "quick" if quick else "full"
    (out / "summary.json").write_text(json.dumps(res.summary, indent=2, default=_jd) + "\n")
    render_plots.sim_report(res.name, res.summary, res.figures, res.report, out)
    print(f"sim: wrote {out / 'report.md'}", file=sys.stderr)
    return res.summary


def _jd(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
