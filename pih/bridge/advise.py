"""``pih advise``: predict the best order of n compression methods cheaply, with its evidence, and verify it.

Cheap measurement (no sequential runs, no evaluation of composed models):

1. One pass over the calibration windows, block by block on the **dense** model: for every compressible linear
   layer the dense weight W, the dense Hessian H = 2/n·Σ x xᵀ and the mean squared input per column (Wanda).
2. Per layer, every order of the methods is applied to W with the bridge's own compressors and the engine's
   conventions (:func:`apply_spec`: masks kept by later stages, SparseGPT's updates snapped back onto an earlier
   quantizer's grid under the ``requantize`` policy, the engine's seeded tie-breaking). Stage prefixes are shared
   (P alone is the first stage of P→Q). The layer's output error of an order is tr(ΔW H ΔWᵀ), ΔW = W − W_final,
   relative to tr(W H Wᵀ) (``weighting="relative"``, default) or raw.
3. The predicted best order minimises the summed layer error. For two methods the predicted order advantage is
   A(Q→P) ∝ E(P first) − E(Q first) (positive: quantize first).
4. Placing methods on the quantization curve: the model with each method alone (the one-shot layer-wise weights
   above) and with the reference quantizer alone at a few bit widths is evaluated on a few evaluation tokens. This
   gives each method's CER (``QuantCurve.cer``, censoring honoured), C_Q = 16/b, the order the Progressive
   Intensity Hypothesis predicts (:func:`pih.order.predicted_order`), and an error→perplexity map (the measured
   (E, perplexity) points, monotone, linearly interpolated) that turns the layer-wise errors into an expected
   perplexity of every order: the expected gain in the metric's units.
5. Confidence: the per-layer differences between the best and the runner-up order — the fraction of layers that
   agree with the sign of the total, a bootstrap over layers of the sign of the sum, and the margin in units of the
   per-layer spread (Σd / (√L·sd(d))).

``verify=True`` then runs every order with the real engine (:class:`pih.bridge.experiment.Runner`: sequential
calibration, full evaluation tokens) and reports the measured order advantage, whether the prediction was right,
the regret M(best) − M(predicted), and the wall time of advising against the wall time of trying every order.
Everything measured goes to a :class:`pih.Store` (``store=``) with full provenance.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import Prune, Quantize, Record, Store, pipeline_label
from ..errors import bad
from ..metrics import QuantCurve, ratio_16_over_b
from ..order import all_orders, predicted_order
from ._common import offline_env

offline_env()

MAX_METHODS = 4
WEIGHTINGS = ("relative", "raw")


@dataclass
class AdviseConfig:
    model: str
    methods: tuple
    seed: int = 0
    eval: str = "kjv"
    calibration: str = "kjv"
    seqlen: int = 128
    calibration_size: int = 32
    eval_tokens: int = 1024  # advise's few evaluation tokens (the quantization curve)
    verify_tokens: int = 16384  # --verify: the real evaluation
    curve_bits: tuple[int, ...] | None = None  # None: bracket each method by stepping the bit width (cheapest)
    weighting: str = "relative"
    layer_fraction: float = 0.25  # stratified subset of layers measured (1 = every layer)
    evaluate: bool = True  # False: the layer-wise order only (no CER, no PIH, no gain in perplexity)
    settings: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    cache: str | None = None
    n_boot: int = 2000
    tokenizer: str | None = None  # a tokenizer folder for model folders that ship none


def check_methods(methods) -> tuple:
    methods = tuple(methods)
    if len(methods) < 2:
        raise bad("methods", [m.label for m in methods], "pih advise needs at least two methods (a --prune and a "
                  "--quantize, or more)")
    if len(methods) > MAX_METHODS:
        raise bad("methods", [m.label for m in methods], f"at most {MAX_METHODS} methods ({math.factorial(5)}+ "
                  "orders are not worth predicting layer by layer)")
    for m in methods:
        if isinstance(m, Prune):
            if m.criterion not in ("magnitude", "wanda", "sparsegpt") or m.structure in ("row", "head", "block"):
                raise bad("prune", m.label, "pih advise predicts layer-wise pruners (magnitude, wanda, sparsegpt; "
                          "unstructured or N:M); block removal changes no layer's error: use pih run")
        elif isinstance(m, Quantize):
            if m.rotation is not None:
                raise bad("quantize", m.label, "rotation is not supported by the layer-wise predictor")
        else:
            raise bad("methods", m, "must be Prune or Quantize specs")
    if len({m.label for m in methods}) != len(methods):
        raise bad("methods", [m.label for m in methods], "a method is given twice")
    return methods


# -- one spec on one weight matrix, as the engine applies it ------------------------------------------------------
def apply_spec(spec, W, H, norm2, mask, grid, settings, gen):
    """Apply ``spec`` to the float weight ``W`` exactly as the engine does for one layer (given that layer's
    calibration statistics): :func:`pih.bridge.engine.compress_matrix`. Returns ``(new_W, mask, grid)``."""
    from .engine import compress_matrix

    newW, mask, grid, _, _ = compress_matrix(spec, W, H, norm2, mask, grid, settings, gen)
    return newW, mask, grid


def _out_err(dW, H) -> float:
    d = dW.double()
    return float(((d @ H.double()) * d).sum())


# -- the cheap measurement -------------------------------------------------------------------------------------
@dataclass
class LayerwiseResult:
    layers: list[str]
    ref: np.ndarray  # (L,) tr(W H Wᵀ)
    errors: dict[tuple, np.ndarray]  # order (tuple of spec indices) -> (L,) tr(ΔW H ΔWᵀ)
    weights: dict[int, dict[str, Any]]  # spec index -> {layer: weight after that spec alone}
    seconds: dict[str, float]
    spec_seconds: dict[int, float]
    spec_calls: dict[int, int]  # how many whole-model stage applications each spec's time covers
    inputs: dict[str, tuple] = field(default_factory=dict)  # layer -> (dense W, H, mean squared input)


def sample_layers(lm, fraction: float) -> list[str]:
    """A deterministic, stratified subset of the compressible linear layers: for every layer type (q_proj, ...,
    down_proj) about ``fraction`` of the blocks, spread evenly over depth and rotated between types."""
    from .engine import layer_names
    from .models import linears_of

    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise bad("layers", fraction, "the fraction of layers must lie in (0, 1]")
    names = layer_names(lm)
    if fraction >= 1:
        return names
    n_blocks = len(lm.blocks())
    m = max(1, round(fraction * n_blocks))
    types = list(linears_of(lm.blocks()[0]))
    chosen = set()
    for j, t in enumerate(types):
        for i in range(m):
            b = (j + round(i * n_blocks / m)) % n_blocks
            chosen.add(f"{lm.block_name(b)}.{t}")
    return [n for n in names if n in chosen]


def measure_layerwise(lm, calib, specs, orders, keep_alone, settings, seed: int = 0, progress: bool = True,
                      layers: list[str] | None = None) -> LayerwiseResult:
    """Per layer, the output error of every order in ``orders`` (tuples of indices into ``specs``), all from the
    dense weights and dense calibration statistics; the weights of ``specs[i]`` alone for ``i in keep_alone``.
    ``layers`` restricts the measurement to those layers (the calibration pass still runs through every block)."""
    from tqdm.auto import tqdm

    from .conv import weight_matrix
    from .engine import _generator, capture_block_inputs
    from .models import linears_of

    t0 = time.time()
    inps = capture_block_inputs(lm, calib, settings.batch_size)
    t_pass = time.time() - t0
    wanted = set(layers) if layers is not None else None
    names, ref, inputs = [], [], {}
    targets = list(dict.fromkeys(list(orders) + [(k,) for k in keep_alone]))
    errors = {o: [] for o in targets}
    weights: dict[int, dict[str, Any]] = {i: {} for i in keep_alone}
    spec_seconds = {i: 0.0 for i in range(len(specs))}
    prefixes = {o[:k] for o in orders for k in range(1, len(o) + 1)} | {(i,) for i in keep_alone}
    spec_calls = {i: sum(1 for p in prefixes if p[-1] == i) for i in range(len(specs))}
    blocks = lm.blocks()
    n_layers = len(wanted) if wanted is not None else sum(len(linears_of(b)) for b in blocks)
    last = max((i for i in range(len(blocks)) if wanted is None or any(
        f"{lm.block_name(i)}.{n}" in wanted for n in linears_of(blocks[i]))), default=-1)
    bar = tqdm(total=n_layers, desc="advise: layer-wise orders", file=sys.stderr, disable=not progress, leave=False)
    for i, blk in enumerate(blocks):
        if i > last:
            break
        todo = {n: m for n, m in linears_of(blk).items() if wanted is None or f"{lm.block_name(i)}.{n}" in wanted}
        t1 = time.time()
        stats, outs = _stats_and_outputs(blk, inps, todo, i < last)
        t_pass += time.time() - t1
        for n, mod in todo.items():
            full = f"{lm.block_name(i)}.{n}"
            W0 = weight_matrix(mod).float().clone()  # (out, in), or a conv's 2-D view
            H, norm2 = stats[n].H, stats[n].norm2
            memo: dict[tuple, tuple] = {(): (W0, None, None)}

            def run(prefix, W0=W0, H=H, norm2=norm2, full=full, memo=memo):
                if prefix not in memo:
                    W, mask, grid = run(prefix[:-1])
                    k = len(prefix) - 1
                    s = specs[prefix[-1]]
                    ts = time.time()
                    gen = _generator(seed, k, s.label, full)
                    memo[prefix] = apply_spec(s, W.clone(), H, norm2, None if mask is None else mask.clone(), grid,
                                              settings, gen)
                    spec_seconds[prefix[-1]] += time.time() - ts
                return memo[prefix]

            names.append(full)
            inputs[full] = (W0, H, norm2)
            ref.append(_out_err(W0, H))
            for o in targets:
                errors[o].append(_out_err(W0 - run(o)[0], H))
            for k in keep_alone:
                weights[k][full] = run((k,))[0].to(mod.weight.dtype).cpu()
            bar.update(1)
        inps = outs
    bar.close()
    return LayerwiseResult(names, np.asarray(ref), {o: np.asarray(v) for o, v in errors.items()}, weights,
                           {"calibration_passes": t_pass}, spec_seconds, spec_calls, inputs)


def add_alone(lw: LayerwiseResult, specs, k: int, settings, seed: int = 0, dtype=None) -> None:
    """``specs[k]`` alone on every measured layer, from the kept dense weights and statistics (no new pass)."""
    from .engine import _generator

    ts = time.time()
    errs, ws = [], {}
    for full in lw.layers:
        W0, H, norm2 = lw.inputs[full]
        newW, _, _ = apply_spec(specs[k], W0.clone(), H, norm2, None, None, settings,
                                _generator(seed, 0, specs[k].label, full))
        errs.append(_out_err(W0 - newW, H))
        ws[full] = newW.to(dtype or W0.dtype).cpu()
    lw.errors[(k,)] = np.asarray(errs)
    lw.weights[k] = ws
    lw.spec_seconds[k] = lw.spec_seconds.get(k, 0.0) + time.time() - ts
    lw.spec_calls[k] = lw.spec_calls.get(k, 0) + 1


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


def _stats_and_outputs(block, inps, todo: dict, need_outputs: bool):
    """One forward pass of ``block`` over ``inps``: the engine's calibration statistics (Hessian, mean squared
    input) of the layers in ``todo`` and, when asked, the block's outputs."""
    from .engine import stats_and_outputs

    if not todo and not need_outputs:
        return {}, None
    stats, outs = stats_and_outputs(block, inps, True, set(todo))
    return stats, (outs if need_outputs else None)


# -- evidence --------------------------------------------------------------------------------------------------
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


# -- the whole advice ------------------------------------------------------------------------------------------
def make_runner(cfg: AdviseConfig, progress: bool = True):
    """The :class:`pih.bridge.experiment.Runner` (model, calibration and evaluation windows) ``advise`` uses;
    pass it to several ``advise`` calls with the same model and data to load them once."""
    from .experiment import ExperimentConfig, Runner

    ecfg = ExperimentConfig(name="advise", model=cfg.model, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype,
                            threads=cfg.threads, analysis=False, cache=cfg.cache, eval=cfg.eval,
                            calibration=cfg.calibration, seqlen=cfg.seqlen, eval_tokens=cfg.verify_tokens,
                            calibration_size=cfg.calibration_size, settings=dict(cfg.settings),
                            tokenizer=cfg.tokenizer)
    return Runner(ecfg, progress=progress)


def _validate(cfg: AdviseConfig) -> None:
    if cfg.weighting not in WEIGHTINGS:
        raise bad("weighting", cfg.weighting, f"must be one of {WEIGHTINGS}")
    for name in ("seqlen", "calibration_size", "eval_tokens", "verify_tokens"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise bad(name, v, "must be a positive integer")
    lf = cfg.layer_fraction
    if isinstance(lf, bool) or not isinstance(lf, (int, float)) or not 0 < lf <= 1:
        raise bad("layers", lf, "the fraction of layers must lie in (0, 1]")
    if cfg.eval_tokens < cfg.seqlen:
        raise bad("eval_tokens", cfg.eval_tokens, f"must be at least one window (seqlen={cfg.seqlen})")
    for b in cfg.curve_bits or ():
        Quantize(int(b))  # validates the bit width


def _install(lm, weights: dict) -> None:
    from .conv import set_weight_matrix
    from .models import linears_of

    for i, blk in enumerate(lm.blocks()):
        for n, mod in linears_of(blk).items():
            set_weight_matrix(mod, weights[f"{lm.block_name(i)}.{n}"].to(mod.weight.device))


def _ppl_of(lm, weights: dict | None, dense: dict, windows, batch_size: int) -> float:
    from .evaluate import perplexity

    _install(lm, weights or dense)
    return perplexity(lm, windows, batch_size)["ppl"]


def _same_data(runner, cfg: AdviseConfig) -> None:
    rc = runner.cfg
    for name in ("model", "seed", "eval", "calibration", "seqlen", "calibration_size", "device", "dtype",
                 "tokenizer"):
        if getattr(rc, name) != getattr(cfg, name):
            raise bad("runner", f"{name}={getattr(rc, name)!r}", f"the runner was built for another {name} "
                      f"than the advice ({getattr(cfg, name)!r})")
    if rc.eval_tokens != cfg.verify_tokens:
        raise bad("runner", f"eval_tokens={rc.eval_tokens}", f"differs from verify_tokens={cfg.verify_tokens}")


def advise(cfg: AdviseConfig, verify: bool = False, store: str | Path | None = None, progress: bool = True,
           runner=None) -> dict:
    """Predict the best order of ``cfg.methods`` (and with ``verify`` run every order for real). See module doc.
    ``runner``: an existing :func:`make_runner` for the same model and data (its loading is then not repeated)."""
    from .. import Provenance
    from .engine import BridgeSettings, CompressionState, _check_pipeline

    methods = check_methods(cfg.methods)
    _validate(cfg)
    settings = BridgeSettings(**cfg.settings)
    n = len(methods)
    t_start = time.time()
    if runner is None:
        runner = make_runner(cfg, progress)
    else:
        _same_data(runner, cfg)
        runner.progress = progress
        runner._restore(runner._snaps[runner._base_key])
    lm = runner.lm
    if lm.arch != "llama":
        raise bad("model", cfg.model, "pih advise works on causal language models (metric: perplexity)")
    for m in methods:  # N:M or group sizes that do not divide a layer: refused before anything runs
        _check_pipeline(lm, (m,), settings, CompressionState())
    t_setup = time.time() - t_start
    # the reference quantizer (the first one) at every curve bit width
    ref_q = next((m for m in methods if isinstance(m, Quantize)), None)
    specs = list(methods)
    curve_idx: dict[int, int] = {}
    if ref_q is not None and cfg.evaluate:
        for b in sorted({int(b) for b in (cfg.curve_bits or ())} | {ref_q.bits}):
            q = ref_q.replace(bits=b)
            if q in specs:
                curve_idx[b] = specs.index(q)
            else:
                specs.append(q)
                curve_idx[b] = len(specs) - 1
    idx_orders = [tuple(o) for o in all_orders(range(n))]
    keep = sorted(set(range(n)) | set(curve_idx.values()))

    sampled = sample_layers(lm, cfg.layer_fraction)
    n_all = len(sample_layers(lm, 1.0))
    scale = n_all / len(sampled)  # partial -> whole model (first order: perplexity increments add over layers)
    t0 = time.time()
    lw = measure_layerwise(lm, runner.calib, specs, idx_orders, keep, settings, cfg.seed, progress, sampled)
    t_layerwise = time.time() - t0

    # the few-token evaluations: dense, each method alone, the reference quantizer's curve
    from tqdm.auto import tqdm

    from .engine import effective_weights

    dense_w = effective_weights(lm, CompressionState())
    n_win = max(1, cfg.eval_tokens // cfg.seqlen)
    few = runner.eval_windows[:n_win]
    t0 = time.time()
    ppl: dict[Any, float] = {}
    variants = ["dense"] + keep if cfg.evaluate else []
    for v in tqdm(variants, desc="advise: few-token evaluations", file=sys.stderr, disable=not progress,
                  leave=False):
        ppl[v] = _ppl_of(lm, None if v == "dense" else {**dense_w, **lw.weights[v]}, dense_w, few,
                         settings.batch_size)
    # auto curve: step the reference quantizer's bit width until every other method is bracketed
    t_curve = 0.0
    if ref_q is not None and cfg.curve_bits is None and cfg.evaluate:
        targets = [ppl[k] for k, m in enumerate(methods)
                   if not (isinstance(m, Quantize) and m.replace(bits=ref_q.bits) == ref_q)]
        tc = time.time()
        while (nb := next_curve_bits({b: ppl[i] for b, i in curve_idx.items()}, targets)) is not None:
            specs.append(ref_q.replace(bits=nb))
            k = len(specs) - 1
            curve_idx[nb] = k
            keep.append(k)
            variants.append(k)
            add_alone(lw, specs, k, settings, cfg.seed, next(lm.model.parameters()).dtype)
            ppl[k] = _ppl_of(lm, {**dense_w, **lw.weights[k]}, dense_w, few, settings.batch_size)
        t_curve = time.time() - tc
    if variants:
        _install(lm, dense_w)
    t_evals = time.time() - t0 - t_curve if variants else 0.0
    eval_s_per_window = t_evals / (len(variants) * few.shape[0]) if variants else None

    # aggregate the layer errors
    w = layer_weights(lw.ref, cfg.weighting)
    E = {o: float((w * lw.errors[o]).sum()) for o in idx_orders}
    E_alone = {k: float((w * lw.errors[(k,)]).sum()) for k in keep}
    if cfg.evaluate:
        to_ppl, map_info = error_to_metric(ppl["dense"], [(E_alone[k], ppl[k]) for k in keep], scale)
        pred = {o: to_ppl(E[o]) for o in idx_orders}
    else:
        map_info = {"resolved": False, "model": "no evaluations (order only)"}
        pred = {o: (None, False) for o in idx_orders}
    ranked = sorted(idx_orders, key=lambda o: E[o])
    best, runner_up = ranked[0], ranked[1]
    d = w * (lw.errors[runner_up] - lw.errors[best])
    conf = confidence(d, cfg.n_boot, cfg.seed)
    tied = [o for o in ranked if abs(E[o] - E[best]) <= 1e-12 * max(1.0, abs(E[best]))]
    if len(tied) > 1:
        conf["level"] = "tie"

    # CERs and what PIH predicts
    cer_rows, pih_order, curve_info = [], None, None
    if ref_q is not None and len(curve_idx) >= 2 and cfg.evaluate:
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
    t_advise = t_layerwise + t_evals + t_curve
    lab = lambda o: pipeline_label(tuple(methods[i] for i in o))  # noqa: E731
    orders_out = []
    for o in idx_orders:
        p, ext = pred[o]
        orders_out.append({"order": lab(o), "layerwise_error": E[o], "predicted_ppl": p,
                           "predicted_ppl_extrapolated": ext, "predicted_best": o == best,
                           "pih_predicted": o == pih_order})
    gain = pred[runner_up][0] - pred[best][0] if map_info["resolved"] else None
    out: dict[str, Any] = {
        "model": lm.name, "methods": [m.label for m in methods], "n_methods": n,
        "recommendation": lab(best), "predicted_best": lab(best), "runner_up": lab(runner_up),
        "expected_gain_ppl": gain if map_info["resolved"] else None,
        "error_to_ppl": map_info,
        "tie": [lab(o) for o in tied] if len(tied) > 1 else None,
        "expected_gain_note": "perplexity of the runner-up minus that of the recommended order, from the layer "
                              "errors through the measured error->perplexity map (few evaluation tokens, one-shot "
                              "dense calibration" + (f", {len(sampled)} of {n_all} layers, increments scaled by "
                              f"{scale:.3g}" if scale != 1 else "") + "): approximate" + (
                                  "" if map_info["resolved"] else "; NOT resolved: the few-token evaluations show no "
                                  "perplexity increase with the error (raise --eval-tokens)"),
        "orders": orders_out, "confidence": conf, "weighting": cfg.weighting,
        "layers": {"names": lw.layers, "diff_runner_up_minus_best": d.tolist(),
                   "ref": lw.ref.tolist(),
                   "errors": {lab(o): lw.errors[o].tolist() for o in idx_orders}},
        "cer": cer_rows, "quant_curve": curve_info,
        "pih_order": lab(pih_order) if pih_order is not None else None,
        "pih_agrees": (pih_order == best) if pih_order is not None else None,
        "few_token_ppl": {("dense" if v == "dense" else specs[v].label): ppl[v] for v in variants},
        "measurement": {"calibration": f"{runner.provenance.calibration} x{cfg.calibration_size}, seqlen "
                        f"{cfg.seqlen}, dense inputs, one pass (no sequential recalibration)",
                        "layers_used": len(lw.layers), "layers_total": n_all,
                        "layer_fraction": cfg.layer_fraction,
                        "partial_models": scale != 1,
                        "partial_note": "each method alone and the curve are evaluated with only the measured "
                        "layers compressed (the others dense)" if scale != 1 else None,
                        "eval_tokens": int(few.numel()), "evaluations": len(variants),
                        "curve_bits": sorted(curve_idx), "settings": settings.to_dict()},
    }
    if n == 2:
        iq = next((i for i, m in enumerate(methods) if isinstance(m, Quantize)), None)
        ip = next((i for i, m in enumerate(methods) if isinstance(m, Prune)), None)
        if iq is not None and ip is not None:
            a_err = E[(ip, iq)] - E[(iq, ip)]
            out["predicted_A_QP_error"] = a_err
            out["predicted_A_QP_ppl"] = (pred[(ip, iq)][0] - pred[(iq, ip)][0]) if map_info["resolved"] else None
            out["predicted_first"] = "quantize" if a_err > 0 else "prune"
    cost = {"setup_s": t_setup, "layerwise_s": t_layerwise, "evals_s": t_evals, "curve_s": t_curve,
            "advise_s": t_advise,
            "calibration_passes_s": lw.seconds["calibration_passes"],
            "spec_s": {specs[k].label: v for k, v in lw.spec_seconds.items()}}
    prefixes = {o[:k] for o in idx_orders for k in range(1, n + 1)}
    est = 0.0
    for p in prefixes:
        s = p[-1]
        per_stage = lw.spec_seconds[s] / max(1, lw.spec_calls[s]) * scale
        needs_pass = not (isinstance(specs[s], Quantize) and specs[s].update == "none") and not (
            isinstance(specs[s], Prune) and specs[s].criterion == "magnitude")
        est += per_stage + (lw.seconds["calibration_passes"] if needs_pass else 0.0)
    n_full = runner.eval_windows.shape[0]
    est += len(idx_orders) * n_full * (eval_s_per_window or 0.0)
    cost["trying_every_order_estimate_s"] = est
    cost["estimate_note"] = ("estimate from this run's per-stage timings: distinct stage prefixes x (compressor "
                             "time + one calibration pass) + every order evaluated on the full tokens"
                             + ("" if cfg.evaluate else "; evaluation time unknown (no evaluations): not included"))
    out["cost"] = cost

    if verify:
        out["verify"] = _verify(runner, methods, idx_orders, best, pih_order, settings, progress)
        out["cost"]["trying_every_order_s"] = out["verify"]["seconds"]
        out["cost"]["ratio_measured"] = out["verify"]["seconds"] / t_advise
    out["cost"]["ratio_estimated"] = est / t_advise
    out["provenance"] = _provenance(runner, cfg, settings)
    if store is not None:
        _store(Path(store), runner, cfg, methods, specs, keep, ppl, E, E_alone, idx_orders, lw, out, settings,
               Provenance)
        out["store"] = str(store)
    return out


def _verify(runner, methods, idx_orders, best, pih_order, settings, progress) -> dict:
    from tqdm.auto import tqdm

    from .evaluate import perplexity

    runner._snaps = {runner._base_key: runner._snaps[runner._base_key]}  # no prefix computed by anyone else
    t0 = time.time()
    ppl = {}
    for o in tqdm(idx_orders, desc="verify: every order", file=sys.stderr, disable=not progress, leave=False):
        pl = tuple(methods[i] for i in o)
        runner.compress(pl, settings)
        ppl[o] = perplexity(runner.lm, runner.eval_windows, settings.batch_size)["ppl"]
    secs = time.time() - t0
    runner._restore(runner._snaps[runner._base_key])  # leave the model dense
    real_best = min(idx_orders, key=lambda o: ppl[o])
    lab = lambda o: pipeline_label(tuple(methods[i] for i in o))  # noqa: E731
    out = {"ppl": {lab(o): ppl[o] for o in idx_orders}, "best": lab(real_best),
           "prediction_right": best == real_best, "regret_ppl": ppl[best] - ppl[real_best],
           "eval_tokens": int(runner.eval_windows.numel()), "seconds": secs}
    if pih_order is not None:
        out["pih_right"] = pih_order == real_best
        out["pih_regret_ppl"] = ppl[pih_order] - ppl[real_best]
    if len(methods) == 2:
        iq = next((i for i, m in enumerate(methods) if isinstance(m, Quantize)), None)
        ip = next((i for i, m in enumerate(methods) if isinstance(m, Prune)), None)
        if iq is not None and ip is not None:
            out["A_QP_ppl"] = ppl[(ip, iq)] - ppl[(iq, ip)]
    return out


def _provenance(runner, cfg, settings) -> dict:
    p = runner.provenance.to_dict()
    p.pop("versions", None)
    p["settings"] = {**p["settings"], "advise_eval_tokens": cfg.eval_tokens, "weighting": cfg.weighting,
                     "curve_bits": list(cfg.curve_bits) if cfg.curve_bits else "auto",
                     "layer_fraction": cfg.layer_fraction}
    return p


def _store(path, runner, cfg, methods, specs, keep, ppl, E, E_alone, idx_orders, lw, out, settings, Provenance):
    """Everything advise measured, with provenance: the few-token perplexities (metric neg_perplexity, eval
    tokens advise's own), the layer-wise errors of every order (metric neg_layerwise_error, per-layer arrays), and
    the verified perplexities (the engine's own provenance)."""
    rp = runner.provenance
    common = dict(backend="torch", model=rp.model, data=rp.data, seqlen=rp.seqlen, calibration=rp.calibration,
                  calibration_size=rp.calibration_size, seed=rp.seed)
    few = Provenance(metric="neg_perplexity", settings={
        "bridge": settings.to_dict(), "eval_tokens": out["measurement"]["eval_tokens"], "dtype": cfg.dtype,
        "ppl_protocol": "gptq-wanda", "calibration_mode": "one-shot dense (pih advise)",
        "layer_fraction": cfg.layer_fraction}, **common)
    lwp = Provenance(metric="neg_layerwise_error", settings={
        "bridge": settings.to_dict(), "dtype": cfg.dtype, "weighting": cfg.weighting,
        "layer_fraction": cfg.layer_fraction,
        "calibration_mode": "one-shot dense (pih advise)", "error": "sum over layers of tr(dW H dW^T)"
        + (" / tr(W H W^T)" if cfg.weighting == "relative" else "")}, **common)
    st = Store(path)
    recs = [Record(few, (), -ppl["dense"], {"source": "pih advise", "what": "dense"})] if "dense" in ppl else []
    for k in (keep if "dense" in ppl else []):
        recs.append(Record(few, (specs[k],), -ppl[k], {"source": "pih advise", "what": "alone"},
                           {"ppl": ppl[k], "layerwise_error": E_alone[k]}))
    for o in idx_orders:
        pl = tuple(methods[i] for i in o)
        recs.append(Record(lwp, pl, -E[o], {"source": "pih advise", "what": "layer-wise order"},
                           {"predicted_ppl": out["orders"][idx_orders.index(o)]["predicted_ppl"]},
                           {"layer_errors": lw.errors[o], "layer_ref": lw.ref}))
    if "verify" in out:
        for o in idx_orders:
            pl = tuple(methods[i] for i in o)
            p = out["verify"]["ppl"][pipeline_label(pl)]
            recs.append(Record(rp, pl, -p, {"source": "pih advise --verify", "order": pipeline_label(pl)},
                               {"ppl": p}))
    have = st.keys()
    for r in recs:
        if r.key not in have:
            st.append(r)


# -- output ----------------------------------------------------------------------------------------------------
def _f(x, fmt=".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, fmt)


def _lines(out: dict, md: bool = False) -> list[str]:
    c, conf, cost = out.get("cer") or [], out["confidence"], out["cost"]
    meas = out["measurement"]
    L = []
    first = {"prune": "prune first", "quantize": "quantize first"}.get(out.get("predicted_first"), "")
    b = "**" if md else ""
    L.append(f"{b}Use: {out['recommendation']}{b}" + (f"  ({first})" if first else ""))
    if out["measurement"]["evaluations"] == 0:
        L.append("Expected gain: not computed (order only: no evaluations, no CER).")
    elif out["expected_gain_ppl"] is None:
        L.append("Expected gain: not resolved (the few-token evaluations do not rise with the layer error; raise "
                 "--eval-tokens).")
    else:
        L.append(f"Expected gain: {_f(out['expected_gain_ppl'], '.3g')} perplexity over the runner-up "
                 f"({out['runner_up']}); approximate (layer errors mapped to perplexity by a fit of the measured "
                 f"evaluations, R2 {_f(out['error_to_ppl']['r2'], '.2f')}).")
    if out.get("tie"):
        L.append(f"TIE: the layer-wise errors of {' and '.join(out['tie'])} are identical (the later methods change "
                 "nothing the earlier ones left); the measurement cannot choose between them.")
    L.append(f"How sure: {conf['level']} -- {conf['layers_agreeing'] * conf['n_layers']:.0f}/{conf['n_layers']} "
             f"measured layers favour it, bootstrap over layers {conf['bootstrap_sign']:.2f}, margin "
             f"{_f(conf['margin_sd'], '.3g')} per-layer sd. This is agreement between layers, not a guarantee: "
             "the layer-wise errors ignore sequential calibration and error propagation.")
    if "verify" in out:
        v = out["verify"]
        verdict = "RIGHT" if v["prediction_right"] else f"WRONG (regret {_f(v['regret_ppl'], '.3g')} perplexity)"
        a = f"; measured A(Q->P) = {_f(v['A_QP_ppl'], '+.3g')}" if "A_QP_ppl" in v else ""
        L.append(f"Verified with the real engine on {v['eval_tokens']} tokens: best {v['best']}{a}; prediction "
                 f"{verdict}.")
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
    else:
        L.append("No quantizer among the methods: no quantization curve, no CER, no PIH prediction.")
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


def _short(label: str) -> str:
    for x in ("unstructured,", ",channel", ",asym", ",absmax"):
        label = label.replace(x, "")
    return label


def human_report(out: dict) -> str:
    head = f"pih advise: {out['model']}  methods {', '.join(out['methods'])}\n"
    return head + "\n".join(_lines(out)) + "\n" + (f"store: {out['store']}\n" if out.get("store") else "") + (
        f"report: {out['report']}\n" if out.get("report") else "")


def write_report(out: dict, folder) -> Path:
    """``folder/README.md`` (readable in two minutes) and PNGs: every order's predicted (and measured)
    perplexity, the per-layer contributions, the quantization curve with each method's CER."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    short = {o["order"]: " ->\n".join(_short(s) for s in o["order"].split(" -> ")) for o in out["orders"]}
    # 1. orders: perplexity above the best order, predicted and (with --verify) measured
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(out["orders"]) + 2), 3.6))
    xs = np.arange(len(out["orders"]))
    have_ppl = all(o["predicted_ppl"] is not None for o in out["orders"])
    pred = np.array([o["predicted_ppl"] if have_ppl else o["layerwise_error"] for o in out["orders"]], dtype=float)
    wdt = 0.38 if "verify" in out else 0.6
    ax.bar(xs - (wdt / 2 if "verify" in out else 0), pred - pred.min(), wdt, color="#8fb3d9",
           label="predicted (layer-wise)" if have_ppl else "layer-wise error above the best (predicted)")
    if not have_ppl and "verify" in out:
        ax = ax.twinx()  # measured perplexity on its own axis: the units differ
    if "verify" in out:
        meas = np.array([out["verify"]["ppl"][o["order"]] for o in out["orders"]])
        ax.bar(xs + wdt / 2, meas - meas.min(), wdt, label=f"measured ({out['verify']['eval_tokens']} tokens)",
               color="#2b5d8a")
    ax.set_xticks(xs, [short[o["order"]] + (" (*)" if o["predicted_best"] else "") for o in out["orders"]],
                  fontsize=7)
    ax.set_ylabel("perplexity above the best order" if have_ppl or "verify" in out else "layer-wise error above "
                  "the best order")
    ax.set_title("Loss of each order vs the best (*: recommended)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "orders.png", dpi=120)
    plt.close(fig)
    # 2. per-layer contributions
    d = np.asarray(out["layers"]["diff_runner_up_minus_best"])
    names = [n.replace("model.layers.", "").replace("self_attn.", "").replace("mlp.", "")
             for n in out["layers"]["names"]]
    fig, ax = plt.subplots(figsize=(max(5, 0.28 * len(d) + 2), 3.4))
    ax.bar(np.arange(len(d)), d, color=["#2b8a3e" if v > 0 else "#c92a2a" for v in d])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(np.arange(len(d)), names, rotation=90, fontsize=6)
    ax.set_ylabel(f"{out['weighting']} error: runner-up - predicted")
    ax.set_title(f"Per layer: green favours {short[out['recommendation']].replace(chr(10), ' ')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "layers.png", dpi=120)
    plt.close(fig)
    figs = ["orders.png", "layers.png"]
    # 3. the quantization curve and the CERs
    if out.get("quant_curve"):
        qc = out["quant_curve"]
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ratios = [16 / b for b in qc["bits"]]
        ax.plot(ratios, qc["ppl"], "o-", color="#2b5d8a", label=qc["quantizer"])
        for bb, r, p in zip(qc["bits"], ratios, qc["ppl"], strict=True):
            ax.annotate(f"{bb}b", (r, p), fontsize=7, textcoords="offset points", xytext=(3, 3))
        for r in out["cer"]:
            if not r["is_C_Q"]:
                ax.axhline(r["ppl_alone_few_tokens"], color="#c92a2a", ls=":", lw=0.8)
                x = r["value"] if r["value"] is not None else r["bound"]
                ax.plot([x], [r["ppl_alone_few_tokens"]], "s", color="#c92a2a",
                        label=f"{r['method']} CER {_f(r['value'], '.3g')}" + (
                            f" (censored {r['censored']})" if r["censored"] else ""))
        ax.set_xlabel("C_Q = 16/b")
        ax.set_ylabel(f"perplexity ({out['measurement']['eval_tokens']} tokens)")
        if max(qc["ppl"]) > 3 * min(qc["ppl"]):
            ax.set_yscale("log")
        ax.set_title("Where each method sits on the quantization curve", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(folder / "curve.png", dpi=120)
        plt.close(fig)
        figs.append("curve.png")
    md = [f"# Which order? {', '.join(out['methods'])} on {out['model']}", ""]
    for line in _lines(out, md=True):  # one paragraph per line; tables and list items as they are
        if line.startswith("|"):
            md.append(line)
        elif line.startswith("  "):
            md.append("- " + line.strip())
        else:
            if md and md[-1].startswith(("|", "- ")):
                md.append("")
            md += [line, ""] if line else []
    md += ["", "![every order](orders.png)", "", "![per layer](layers.png)", ""]
    if "curve.png" in figs:
        md += ["![quantization curve](curve.png)", ""]
    md += ["## How this was measured", "",
           "Layer-wise: one pass over the calibration windows on the dense model; for each measured linear layer "
           "every order is applied to its dense weight with the bridge's compressors (masks kept by later stages, "
           "SparseGPT's updates snapped back onto an earlier quantizer's grid), scored by tr(dW H dW^T) with the "
           "dense Hessian H. The evaluations place each method alone on the first quantizer's curve (CER, "
           "C_Q = 16/b). `--verify` runs every order with the sequential engine. A(Q->P) = ppl(P first) - "
           "ppl(Q first): positive means quantizing first is better.", "",
           "Provenance: `advise.json` (everything printed above, per-layer errors included) and the records store "
           f"`{out.get('store') or '(none)'}`.", ""]
    (folder / "README.md").write_text("\n".join(md))
    (folder / "advise.json").write_text(json.dumps(out, indent=1, default=str, allow_nan=True))
    return folder
