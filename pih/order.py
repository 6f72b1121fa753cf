"""Order search: every permutation of n methods, the order the hypothesis predicts, and its regret."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .errors import bad
from .methods import pipeline_label


def all_orders(methods: Sequence) -> list[tuple]:
    """All n! application orders of ``methods`` (each a pipeline tuple)."""
    methods = tuple(methods)
    if not methods:
        raise bad("methods", methods, "need at least one method")
    if len(methods) > 8:
        raise bad("methods", f"{len(methods)} methods", "more than 8 methods: 40320+ orders, refuse to enumerate")
    return list(itertools.permutations(methods))


def predicted_order(methods: Sequence, cers: Sequence[float]) -> tuple:
    """The Progressive Intensity order: ascending intensity (CER), the weakest first, the strongest last.

    Ties keep the given order (stable sort).
    """
    methods = tuple(methods)
    c = np.asarray(cers, dtype=float)
    if c.shape != (len(methods),):
        raise bad("cers", list(c), f"needs one CER per method ({len(methods)})")
    if not np.isfinite(c).all():
        raise bad("cers", list(c), "CERs must be finite (censored CERs need a bound first)")
    return tuple(methods[i] for i in np.argsort(c, kind="stable"))


@dataclass(frozen=True)
class OrderSearch:
    """Scores of every order (higher M is better), the best, the predicted one and its regret (best − predicted)."""

    scores: dict[tuple, float]
    best: tuple
    predicted: tuple | None
    regret: float | None

    def table(self) -> list[dict]:
        rows = sorted(self.scores.items(), key=lambda kv: -kv[1])
        return [
            {
                "order": pipeline_label(o),
                "score": s,
                "best": o == self.best,
                "predicted": o == self.predicted,
            }
            for o, s in rows
        ]


def search_orders(methods: Sequence, evaluate: Callable[[tuple], float], cers: Sequence[float] | None = None,
                  progress: bool = True) -> OrderSearch:
    """Evaluate every order with ``evaluate(pipeline) -> M`` (higher is better)."""
    orders = all_orders(methods)
    scores = {}
    for o in tqdm(orders, desc="orders", disable=not progress or len(orders) < 3, leave=False):
        s = float(evaluate(o))
        if not np.isfinite(s):
            raise bad("evaluate", f"{s} for {pipeline_label(o)}", "the evaluation returned a non-finite score")
        scores[o] = s
    best = max(orders, key=lambda o: scores[o])
    pred = predicted_order(methods, cers) if cers is not None else None
    regret = scores[best] - scores[pred] if pred is not None else None
    return OrderSearch(scores, best, pred, regret)


def unit_model_error(order, lam, r, q, owner, k) -> float:
    """The unit model of proofs/n_methods.md (N3, C2, C3): error of applying ``order`` (items: 'P' or a
    quantizer index) under A1 + DS + A2a[phi]; the pruner removes the k units of least λ(r − q_seen), ties by
    index. Returns E (lower is better)."""
    n = len(r)
    applied = np.zeros(n, bool)
    pruned = np.zeros(n, bool)
    for f in order:
        if f == "P":
            seen = np.where(applied, q, 0.0)
            pruned = np.zeros(n, bool)
            pruned[np.lexsort((np.arange(n), lam * (r - seen)))[:k]] = True
        else:
            applied |= owner == f
    return float((lam * r)[pruned].sum() + (lam * np.where(applied, q, 0.0))[~pruned].sum())
