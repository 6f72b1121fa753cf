"""Assumption sets as values: how per-unit errors become performance, and what the methods are assumed to do.

An :class:`AssumptionSet` bundles
- ``error``: which unit error the performance model uses ("output": ||(w−w')X||², or "weight": ||w−w'||²);
- ``sensitivity(shape, seed)``: the per-unit sensitivities λ_u (units are output rows of each layer);
- ``performance(e, lam, dense)``: the metric M (higher is better) from per-unit errors e, sensitivities and the
  dense model's per-unit output norms (for normalisation);
- ``prune_reference``: for pruners that minimise a measured degradation (row/block removal, ``loss``), which
  model the degradation is measured against: "phi" (A2's well-designed pruner: degradation relative to the
  original model) or "seen" (relative to the model the pruner is given), or None (the pruner's own default);
- ``rounding``: override the quantizers' rounding ("stochastic": zero-mean noise as A2(b) says; "down":
  biased, non-zero-mean noise), or None.

A sweep takes an assumption set and uses nothing else from it, so a new set needs no change elsewhere::

    import numpy as np
    from sim.assumptions import A1, AssumptionSet, register

    def sqrt_perf(e, lam, dense):                       # performance concave in the error
        return -float(np.sqrt((lam * e).sum() / (lam * dense).sum()))

    MINE = register(AssumptionSet("sqrt", "M = -sqrt(relative error)", performance=sqrt_perf))
    # now: run_grid(..., assumptions=MINE)  or  pih simulate --preset disjoint --assumptions sqrt
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pih.errors import bad


def unit_sensitivity(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """λ_u = 1 for every unit."""
    return np.ones(shape)


def lognormal_sensitivity(sigma: float = 1.0) -> Callable:
    """λ_u log-normal with log-std ``sigma``, fixed per unit by the seed."""

    def f(shape, seed):
        return np.random.default_rng([seed, 7]).lognormal(0.0, sigma, shape)

    f.__name__ = f"lognormal({sigma:g})"
    return f


def linear_performance(e, lam, dense) -> float:
    """A1: M = −Σ λ_u e_u / Σ λ_u d_u (minus the relative error; d_u: the dense unit's output norm)."""
    return -float(np.sum(lam * e) / np.sum(lam * dense))


def exponential_performance(kappa: float = 5.0) -> Callable:
    """Perplexity-like: M = −exp(κ · relative error) (PPL = exp(loss), the loss linear in the error)."""

    def f(e, lam, dense):
        return -float(np.exp(kappa * np.sum(lam * e) / np.sum(lam * dense)))

    f.__name__ = f"exponential({kappa:g})"
    return f


def correlated_performance(rho: float = 0.5) -> Callable:
    """Correlated units: M = −[(1−ρ) Σ λe + ρ (Σ √(λe))²] / Σ λd; ρ=0 is A1, ρ=1 fully coherent errors."""

    def f(e, lam, dense):
        le = lam * np.maximum(e, 0.0)
        return -float(((1 - rho) * le.sum() + rho * np.sqrt(le).sum() ** 2) / np.sum(lam * dense))

    f.__name__ = f"correlated({rho:g})"
    return f


@dataclass(frozen=True)
class AssumptionSet:
    """See the module docstring."""

    name: str
    description: str = ""
    error: str = "output"
    sensitivity: Callable = field(default=unit_sensitivity, compare=False)
    performance: Callable = field(default=linear_performance, compare=False)
    prune_reference: str | None = None
    rounding: str | None = None

    def __post_init__(self) -> None:
        if self.error not in ("output", "weight"):
            raise bad("error", self.error, "must be 'output' or 'weight'")
        if self.prune_reference not in (None, "phi", "seen"):
            raise bad("prune_reference", self.prune_reference, "must be None, 'phi' or 'seen'")
        if self.rounding not in (None, "nearest", "stochastic", "down"):
            raise bad("rounding", self.rounding, "must be None, nearest, stochastic or down")

    def adapt(self, spec):
        """The spec as this assumption set says it behaves: a quantizer's rounding (``pih.MixedPrecision`` has
        no rounding to change, and keeps its own)."""
        from pih.methods import Joint, Quantize

        if self.rounding is None:
            return spec
        if isinstance(spec, Quantize):
            return spec.replace(rounding=self.rounding)
        if isinstance(spec, Joint):
            return Joint(spec.prune, spec.quant.replace(rounding=self.rounding))
        return spec

    def adapt_options(self, options):
        """The simulation options (:class:`sim.kernels.SimOptions`) as this set says the methods behave: the
        pruner's reference model."""
        return options if self.prune_reference is None else options.replace(reference=self.prune_reference)

    def metric(self, weight_err, output_err, dense_output, dense_weight, lam) -> float:
        """M of a compressed model from its per-unit errors."""
        e, d = (output_err, dense_output) if self.error == "output" else (weight_err, dense_weight)
        return self.performance(np.asarray(e), np.asarray(lam), np.asarray(d))

    def to_dict(self) -> dict:
        return {"name": self.name, "error": self.error, "sensitivity": getattr(self.sensitivity, "__name__", "?"),
                "performance": getattr(self.performance, "__name__", "?"),
                "prune_reference": self.prune_reference, "rounding": self.rounding}


ASSUMPTION_SETS: dict[str, AssumptionSet] = {}


def register(a: AssumptionSet) -> AssumptionSet:
    """Make ``a`` available by name (``pih simulate --assumptions NAME``); a name already registered is refused
    (tests that register one restore the registry with ``pih.registry.scoped()``)."""
    if not isinstance(a, AssumptionSet):
        raise bad("assumptions", a, "register an AssumptionSet")
    if a.name in ASSUMPTION_SETS:
        raise bad("name", a.name, "an assumption set of that name is already registered")
    ASSUMPTION_SETS[a.name] = a
    return a


def get(name: str) -> AssumptionSet:
    if name not in ASSUMPTION_SETS:
        raise bad("assumptions", name, f"must be one of {sorted(ASSUMPTION_SETS)}")
    return ASSUMPTION_SETS[name]


A1 = register(AssumptionSet(
    "A1", "additive unit errors, λ_u = 1, M = −relative output error; mechanisms as they are"))
A1_LAMBDA = register(AssumptionSet(
    "A1-lambda", "A1 with log-normal per-unit sensitivities λ_u", sensitivity=lognormal_sensitivity(1.0)))
A2 = register(AssumptionSet(
    "A2", "A1 + well-designed pruning (degradation relative to φ) + zero-mean (stochastic) rounding",
    prune_reference="phi", rounding="stochastic"))
A2_SEEN = register(AssumptionSet(
    "A2-seen", "A2 with the pruner measuring degradation relative to the model it sees (not φ)",
    prune_reference="seen", rounding="stochastic"))
A2_NEAREST = register(AssumptionSet(
    "A2-nearest", "A2's well-designed pruner with round-to-nearest quantization", prune_reference="phi"))
PPL = register(AssumptionSet(
    "ppl", "A1 errors with a perplexity-like performance M = −exp(5·relative error)",
    performance=exponential_performance(5.0)))
CORRELATED = register(AssumptionSet(
    "correlated", "correlated unit errors (ρ = 0.5)", performance=correlated_performance(0.5)))
ASYM_NOISE = register(AssumptionSet(
    "asym-noise", "A2 with biased (round-down) quantization noise", prune_reference="phi", rounding="down"))
WEIGHT = register(AssumptionSet("A1-weight", "A1 on weight errors ||w − w'||²", error="weight"))

# The sets ``pih compare`` scores when none is named: the built-in ones, an explicit list (a set a user or a test
# registers is used when named, never added to the defaults behind their back).
COMPARE_DEFAULTS = ("A1", "A1-lambda", "A2", "A2-seen", "A2-nearest", "ppl", "correlated", "asym-noise", "A1-weight")

BUILTIN_NAMES = frozenset(ASSUMPTION_SETS)  # what a fresh import registers (pih.registry.scoped restores to it)
