"""Predict a real model's grid of A(Q→P) by compressing its actual layer tensors in the simulation.

Given the weights of a model's linear layers and their dense calibration inputs (exported by the torch bridge,
:func:`pih.bridge.export.export_layers`, read by :func:`sim.tensors.load_tensors`), and the same pruning and
quantization specs a bridge run used, :func:`predict_grid` runs the simulation's kernels (the specs as each
assumption set says the methods behave) on every layer — P alone, Q alone, P→Q and Q→P, with the same per-method keys in
both orders — collects the per-row weight and output errors over all layers, and maps them to M with the
assumption set's metric. The prediction is A(Q→P) = M(Q first) − M(P first). Nothing here looks at a measured
perplexity: every number comes from compressing the tensors.

Layers of the same shape are stacked and run through one jitted call per (shape, specs) — the same function
:func:`sim.sweep.run_grid` uses (``grid_one_seed``), so on one group of layers the two give the same A. Each layer
is compressed on its own dense inputs (the simulation has no block structure: no sequential calibration on
already-compressed inputs, no nonlinearity between layers); that is part of what the comparison tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pih.errors import bad
from pih.methods import Prune, Quantize

from . import pipeline as pl
from .assumptions import AssumptionSet, get
from .kernels import SimOptions
from .sweep import Pairing, grid_one_seed
from .tensors import Model, models_from_tensors

DEFAULT_MAX_SAMPLES = 2048  # calibration rows (tokens) kept per layer


def layer_groups(layers, max_samples: int | None = DEFAULT_MAX_SAMPLES) -> list[tuple[list[str], Model]]:
    """Stack same-shape layers: [(names, Model(W (L, out, in), X (L, in, n)))], in first-seen order.

    ``layers``: a dict of exported tensors (``W::``/``X::`` or ``.weight``/``.inputs`` keys), a dict of name →
    one-layer :class:`Model`, or one (stacked) :class:`Model`. At most ``max_samples`` calibration rows per layer.
    """
    if isinstance(layers, Model):
        models = {"layers": layers}
    elif isinstance(layers, Mapping) and layers and all(isinstance(v, Model) for v in layers.values()):
        models = dict(layers)
    elif isinstance(layers, Mapping) and layers:
        models = models_from_tensors(dict(layers), max_samples=max_samples)
    else:
        raise bad("layers", type(layers).__name__, "expected exported tensors, a dict of Models or a Model")
    groups: dict[tuple, tuple[list[str], list, list]] = {}
    for name, m in models.items():
        X = m.X if not max_samples else m.X[..., :max_samples]
        key = (tuple(m.W.shape[1:]), tuple(X.shape[1:]))
        names, Ws, Xs = groups.setdefault(key, ([], [], []))
        names.append(name) if m.W.shape[0] == 1 else names.extend(f"{name}[{j}]" for j in range(m.W.shape[0]))
        Ws.append(m.W)
        Xs.append(X)
    return [(names, Model(jnp.concatenate(Ws), jnp.concatenate(Xs))) for names, Ws, Xs in groups.values()]


def _common_spec(specs, kind: type, what: str):
    specs = list(specs)
    if not specs or not all(isinstance(s, kind) for s in specs):
        raise bad(what, specs, f"expected a non-empty list of pih.{kind.__name__}")
    field = "ratio" if kind is Prune else "bits"
    base = {k: v for k, v in specs[0].to_dict().items() if k != field}
    for s in specs[1:]:
        if {k: v for k, v in s.to_dict().items() if k != field} != base:
            raise bad(what, s.label, f"all specs must differ only in their {field} (first: {specs[0].label})")
    return specs


def predict_grid(layers, prune_specs: Iterable[Prune], quant_specs: Iterable[Quantize],
                 assumption_sets: Iterable[AssumptionSet | str], seed: int = 0, progress: bool = True,
                 options: SimOptions | dict | None = None, max_samples: int | None = DEFAULT_MAX_SAMPLES) -> list[dict]:
    """Predicted A(Q→P) for every (prune spec, quant spec) point and assumption set.

    Returns one dict per (assumption set, bits, ratio): {prune, quant, assumption_set, A_pred, M_pf, M_qf, M_P,
    M_Q, n_changed_rows, free_zeros_qf}; ``A_pred = M_qf − M_pf`` (M_qf: Q first, P∘Q; M_pf: P first, Q∘P).
    ``options``: the simulation-only options (:class:`sim.kernels.SimOptions` or a dict of its fields, e.g.
    ``{"offgrid": "requantize"}``, the bridge's policy).
    ``seed`` keys the tie-breaks and stochastic rounding (group g of layers uses ``fold_in(PRNGKey(seed), g)``,
    group 0 ``PRNGKey(seed)`` as ``run_grid``) and the assumption set's sensitivities.
    """
    P = _common_spec(prune_specs, Prune, "prune_specs")
    Q = _common_spec(quant_specs, Quantize, "quant_specs")
    for spec in (*P, *Q):
        pl.stage_from_spec(spec)  # the shared rules, and a kernel for it
    sets = [get(a) if isinstance(a, str) else a for a in assumption_sets]
    if not sets:
        raise bad("assumption_sets", sets, "give at least one assumption set")
    groups = layer_groups(layers, max_samples)
    ratios = np.array([p.ratio for p in P], dtype=float)
    bits = np.array([q.bits for q in Q], dtype=float)
    pairing = Pairing("predict", P[0], Q[0], SimOptions.of(options))
    n_rows = sum(m.W.shape[0] * m.W.shape[1] for _, m in groups)
    cache: dict[tuple, list[dict]] = {}
    out: list[dict] = []
    bar = tqdm(total=len(sets) * len(groups), desc="sim predict", file=sys.stderr, disable=not progress)
    for a in sets:
        prune, quant, opts = pairing.under(a)
        prune, quant = pl.canonical(prune), pl.canonical(quant)
        lam_all = np.asarray(a.sensitivity((n_rows,), int(seed)), dtype=float).reshape(-1)
        uses_lam = prune.structure in ("row", "block") or prune.criterion == "loss"
        if not uses_lam:  # the reference model and λ only matter to row/block/loss pruners: one compile, one run
            opts = opts.replace(reference="seen")
        ck = (prune, quant, opts, getattr(a.sensitivity, "__name__", id(a.sensitivity)) if uses_lam else None)
        if ck not in cache:
            res, pos = [], 0
            for g, (_, m) in enumerate(groups):
                L, o = int(m.W.shape[0]), int(m.W.shape[1])
                lam = lam_all[pos: pos + L * o].reshape(L, o)
                pos += L * o
                key = jax.random.PRNGKey(int(seed))
                if g:
                    key = jax.random.fold_in(key, g)
                r = grid_one_seed(m.W, m.X, key, jnp.asarray(lam), jnp.asarray(ratios), jnp.asarray(bits),
                                  prune=prune, quant=quant, options=opts)
                # (B, R, L, o) -> (B, R, L*o); scalars per point stay (B, R)
                res.append({k: np.asarray(v).reshape(len(bits), len(ratios), -1) for k, v in r._asdict().items()})
                bar.update(1)
            cache[ck] = res
        else:
            bar.update(len(groups))
        arr = {k: np.concatenate([r[k] for r in cache[ck]], axis=2) for k in cache[ck][0]}
        out.extend(_points(a, arr, lam_all, P, Q))
    bar.close()
    return out


def _points(a: AssumptionSet, arr: dict, lam, P, Q) -> list[dict]:
    def metric(kind: str, bi: int, ri: int) -> float:
        return a.metric(arr[f"{kind}_weight"][bi, ri], arr[f"{kind}_output"][bi, ri], arr["dense_output"][bi, ri],
                        arr["removal_weight"][bi, ri], lam)

    m_p = [metric("p", 0, ri) for ri in range(len(P))]
    m_q = [metric("q", bi, 0) for bi in range(len(Q))]
    rows = []
    for bi, q in enumerate(Q):
        for ri, p in enumerate(P):
            pf, qf = metric("pf", bi, ri), metric("qf", bi, ri)
            rows.append({"prune": float(p.ratio), "quant": int(q.bits), "assumption_set": a.name,
                         "A_pred": qf - pf, "M_pf": pf, "M_qf": qf, "M_P": m_p[ri], "M_Q": m_q[bi],
                         "n_changed_rows": int((arr["pf_row_owner"][bi, ri] != arr["qf_row_owner"][bi, ri]).sum()),
                         "free_zeros_qf": int(arr["qf_free_zeros"][bi, ri].sum())})
    return rows
