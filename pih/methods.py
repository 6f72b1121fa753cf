"""Compression methods as frozen, validated specs.

A spec says *what* to do; a backend (``sim`` or the torch bridge) does it. A pipeline is a tuple of specs in
application order: ``(P, Q)`` means P first, then Q, i.e. the composed map Q∘P.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from . import registry
from .errors import PihError, bad
from .ownership import Granularity

PRUNE_CRITERIA = ("magnitude", "wanda", "sparsegpt", "loss")  # the built-in ones; pih.registry holds every one
PRUNE_STRUCTURES = ("unstructured", "row", "head", "block")  # plus "N:M" strings such as "2:4"
QUANT_SCALES = ("absmax", "mse")
QUANT_ROTATIONS = (None, "hadamard")
QUANT_UPDATES = ("none", "gptq")  # the built-in ones; pih.registry holds every one
QUANT_ROUNDINGS = ("nearest", "stochastic", "down")  # down: biased (floor), for assumption variants only
QUANT_GRIDS = ("full", "odd")


def n_pruned(ratio: float, n: int) -> int:
    """How many of ``n`` units a pruning ratio removes: ``int(ratio * n)``, the count of the reference
    implementations (SparseGPT, Wanda and their magnitude baseline), as computed in floating point. Every backend
    uses this one definition."""
    return int(float(ratio) * int(n))


def _parse_nm(structure: str) -> tuple[int, int] | None:
    """Return (N, M) for an "N:M" structure string (N kept out of every M), else None."""
    if ":" not in structure:
        return None
    try:
        n, m = (int(s) for s in structure.split(":"))
    except ValueError:
        raise bad("structure", structure, "N:M must be two integers such as '2:4'") from None
    if not 0 < n < m:
        raise bad("structure", structure, "N:M needs 0 < N < M (N weights kept out of every M)")
    return n, m


def _check_bits(name: str, bits: object) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise bad(name, bits, "bit width must be an integer")
    if not 1 <= bits <= 16:
        raise bad(name, bits, "bit width must lie in [1, 16]")


def _check_group(group: object) -> None:
    if isinstance(group, str):
        if group not in ("channel", "tensor"):
            raise bad("group", group, "must be 'channel', 'tensor' or a positive integer group size")
    elif isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise bad("group", group, "must be 'channel', 'tensor' or a positive integer group size")


def _check_grid(grid: object, symmetric: bool, bits) -> None:
    _check_choice("grid", grid, QUANT_GRIDS)
    if grid == "odd" and not symmetric:
        raise bad("grid", grid, "the odd grid is symmetric: it needs symmetric=True")


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise bad(name, value, f"must be one of {choices}")


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise bad("shape", tuple(shape), "expected a 2-D weight shape (out_features, in_features)")
    return int(shape[0]), int(shape[1])


class _Spec:
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return self.label  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Prune(_Spec):
    """Pruning: remove a fraction ``ratio`` of the weights (or rows, heads, blocks).

    criterion: magnitude | wanda (|W_ij|·||X_j||) | sparsegpt (OBS with weight update) | loss (remove what hurts
    the measured output least, as block removal in SLEB). structure: unstructured | "N:M" (N kept of every M) |
    row | head | block.
    """

    ratio: float
    criterion: str = "magnitude"
    structure: str = "unstructured"
    kind: ClassVar[str] = "prune"

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
            raise bad("ratio", self.ratio, "pruning ratio must be a number in [0, 1)")
        if not (math.isfinite(self.ratio) and 0.0 <= self.ratio < 1.0):
            raise bad("ratio", self.ratio, "pruning ratio must lie in [0, 1)")
        object.__setattr__(self, "ratio", float(self.ratio))
        method = registry.get_method("prune", self.criterion)  # a registered pruning criterion
        if not isinstance(self.structure, str):
            raise bad("structure", self.structure, "must be a string")
        nm = _parse_nm(self.structure)
        if nm is None:
            _check_choice("structure", self.structure, PRUNE_STRUCTURES)
        else:
            implied = 1.0 - nm[0] / nm[1]
            if abs(self.ratio - implied) > 1e-9:
                raise bad("ratio", self.ratio, f"structure {self.structure!r} implies ratio {implied:g}")
        if ("nm" if nm else self.structure) not in method.structures:
            allowed = ", ".join("N:M" if x == "nm" else x for x in method.structures)
            kind = "structured removal" if "unstructured" not in method.structures else "these structures"
            raise bad("criterion", self.criterion, f"the {self.criterion!r} criterion is for {kind} ({allowed}), "
                      f"not {self.structure!r}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return _parse_nm(self.structure)

    @property
    def label(self) -> str:
        return f"P[{self.criterion},{self.structure},{self.ratio:g}]"

    def granularity(self) -> Granularity:
        if self.nm is not None:
            g = Granularity("nm", self.nm[1])
        elif self.structure == "unstructured":
            g = Granularity("weight")
        else:
            g = Granularity(self.structure)
        if registry.get_method("prune", self.criterion).updates_kept:  # an update spreads a pruned weight's
            # error over its row (SparseGPT)
            g = g.coarsen(Granularity("row"))
        return g

    def check_shape(self, shape: tuple[int, ...]) -> None:
        _, n_in = _check_shape(shape)
        if self.nm is not None and n_in % self.nm[1]:
            raise bad("structure", self.structure, f"M={self.nm[1]} does not divide in_features={n_in}")


def RemoveBlocks(ratio: float) -> Prune:
    """Block removal (SLEB-like): drop the fraction ``ratio`` of blocks whose removal hurts least."""
    return Prune(ratio, criterion="loss", structure="block")


@dataclass(frozen=True)
class Quantize(_Spec):
    """Uniform quantization to ``bits`` bits.

    group: "channel" (one scale per output row) | "tensor" | g (one scale per g consecutive input weights).
    scale: absmax (largest magnitude) | mse (MSE-optimal clipping). rotation: None | "hadamard" (rotate before
    quantizing). update: a registered quantizer (``pih.registry``): none (round to nearest) | gptq (column-wise
    error feedback). rounding: nearest | stochastic | down (biased; for assumption variants).
    grid: "full" — 2^b levels spanning the range, scale = range/(2^b − 1) with an integer zero point (the GPTQ /
    RTN reference convention; symmetric: range [−amax, amax], the top level clamped); "odd" (symmetric only) —
    levels k·s with |k| ≤ 2^(b−1) − 1 and s = amax/(2^(b−1) − 1): ±amax exactly on the grid and Q(−x) = −Q(x),
    the max-scaled odd grid of Harma et al.'s theorem.
    """

    bits: int
    group: int | str = "channel"
    symmetric: bool = True
    scale: str = "absmax"
    rotation: str | None = None
    update: str = "none"
    rounding: str = "nearest"
    grid: str = "full"
    kind: ClassVar[str] = "quantize"

    def __post_init__(self) -> None:
        _check_bits("bits", self.bits)
        _check_group(self.group)
        if not isinstance(self.symmetric, bool):
            raise bad("symmetric", self.symmetric, "must be True or False")
        _check_choice("scale", self.scale, QUANT_SCALES)
        _check_choice("rotation", self.rotation, QUANT_ROTATIONS)
        registry.get_method("quantize", self.update)  # a registered quantizer ("none": round to nearest)
        _check_choice("rounding", self.rounding, QUANT_ROUNDINGS)
        _check_grid(self.grid, self.symmetric, self.bits)

    @property
    def label(self) -> str:
        parts = [f"{self.bits}b", f"g{self.group}" if isinstance(self.group, int) else self.group]
        parts.append("sym" if self.symmetric else "asym")
        parts.append(self.scale)
        if self.rotation:
            parts.append(self.rotation)
        if self.update != "none":
            parts.append(self.update)
        if self.rounding != "nearest":
            parts.append(self.rounding)
        if self.grid != "full":
            parts.append(self.grid)
        return "Q[" + ",".join(parts) + "]"

    def compression_ratio(self, convention=None) -> float:
        """C_Q under ``convention`` (a function of bits; default 16/b)."""
        from .metrics import ratio_16_over_b

        return float((convention or ratio_16_over_b)(self.bits))

    def granularity(self) -> Granularity:
        if self.group == "tensor":
            g = Granularity("tensor")
        elif self.group == "channel":
            g = Granularity("row")
        else:
            g = Granularity("group", int(self.group))
        if self.rotation is not None or registry.get_method("quantize", self.update).updates_kept:
            # A rotation mixes a whole row; GPTQ feeds each column's error into the rest of its row.
            g = g.coarsen(Granularity("row"))
        return g

    def check_shape(self, shape: tuple[int, ...]) -> None:
        _, n_in = _check_shape(shape)
        if isinstance(self.group, int) and n_in % self.group:
            raise bad("group", self.group, f"does not divide in_features={n_in}")


@dataclass(frozen=True)
class MixedPrecision(_Spec):
    """Quantization with one bit width per unit (layer), in the order the units are listed."""

    bits: tuple[int, ...]
    group: int | str = "channel"
    symmetric: bool = True
    scale: str = "absmax"
    update: str = "none"
    grid: str = "full"
    kind: ClassVar[str] = "mixed"

    def __post_init__(self) -> None:
        if isinstance(self.bits, (str, bytes)) or not hasattr(self.bits, "__iter__"):
            raise bad("bits", self.bits, "must be a sequence of bit widths, one per unit")
        bits = tuple(self.bits)
        if not bits:
            raise bad("bits", self.bits, "must name at least one unit")
        for i, b in enumerate(bits):
            _check_bits(f"bits[{i}]", b)
        object.__setattr__(self, "bits", bits)
        _check_group(self.group)
        _check_choice("scale", self.scale, QUANT_SCALES)
        registry.get_method("quantize", self.update)
        _check_grid(self.grid, self.symmetric, bits)

    @property
    def label(self) -> str:
        return "MP[" + ",".join(map(str, self.bits)) + "]"

    def quantizer(self, unit: int) -> Quantize:
        """The per-unit quantizer."""
        return Quantize(self.bits[unit], self.group, self.symmetric, self.scale, None, self.update, grid=self.grid)

    def granularity(self) -> Granularity:
        return self.quantizer(0).granularity()

    def check_shape(self, shape: tuple[int, ...]) -> None:
        self.quantizer(0).check_shape(shape)


@dataclass(frozen=True)
class Joint(_Spec):
    """Pruning and quantization in one pass (SparseGPT's joint mode: each column pruned, then quantized, then its
    error fed forward), one stage of a pipeline. Its pruner and quantizer are ordinary specs."""

    prune: Prune
    quant: Quantize
    kind: ClassVar[str] = "joint"

    def __post_init__(self) -> None:
        if not isinstance(self.prune, Prune):
            raise bad("prune", self.prune, "a joint stage needs a Prune spec")
        if not isinstance(self.quant, Quantize):
            raise bad("quant", self.quant, "a joint stage needs a Quantize spec")

    @property
    def label(self) -> str:
        return f"J[{self.prune.label}+{self.quant.label}]"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "prune": self.prune.to_dict(), "quant": self.quant.to_dict()}

    def granularity(self) -> Granularity:
        return self.prune.granularity().coarsen(self.quant.granularity())

    def check_shape(self, shape: tuple[int, ...]) -> None:
        self.prune.check_shape(shape)
        self.quant.check_shape(shape)


Spec = Prune | Quantize | MixedPrecision | Joint
_KINDS = {"prune": Prune, "quantize": Quantize, "mixed": MixedPrecision, "joint": Joint}


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """Inverse of ``spec.to_dict()``."""
    if not isinstance(d, dict) or "kind" not in d:
        raise bad("spec", d, "expected a dict with a 'kind' key")
    kind = d["kind"]
    if kind not in _KINDS:
        raise bad("kind", kind, f"must be one of {tuple(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names - {"kind"}
    if unknown:
        raise bad("spec", sorted(unknown), f"unknown keys for {kind}; allowed: {sorted(names)}")
    kwargs = {k: v for k, v in d.items() if k != "kind"}
    if kind == "mixed" and "bits" in kwargs:
        kwargs["bits"] = tuple(kwargs["bits"])
    if kind == "joint":
        kwargs = {k: spec_from_dict(v) for k, v in kwargs.items()}
    return cls(**kwargs)


def pipeline_label(pipeline: tuple[Spec, ...]) -> str:
    """'P[...] -> Q[...]' in application order."""
    return " -> ".join(s.label for s in pipeline) if pipeline else "dense"


# -- the built-in methods: registry entries and command-line spellings ----------------------------------------
def _parse_prune(args: list[str], name: str):
    wrong = PihError(f"expected {name}:RATIO or {name}:N:M with numbers (e.g. {name}:0.5, {name}:2:4)")
    if len(args) == 1:
        try:
            ratio = float(args[0])
        except ValueError:
            raise wrong from None
        return Prune(ratio, criterion=name)
    if len(args) == 2:
        try:
            n, m = int(args[0]), int(args[1])
        except ValueError:
            raise wrong from None
        if not 0 < n < m:
            raise PihError(f"N:M needs 0 < N < M (N kept of every M), got {n}:{m}")
        return Prune(1 - n / m, criterion=name, structure=f"{n}:{m}")
    raise wrong


def _parse_blocks(args: list[str], name: str):
    wrong = PihError(f"expected {name}:RATIO (the fraction of blocks removed, e.g. blocks:0.25)")
    if len(args) != 1:
        raise wrong
    try:
        ratio = float(args[0])
    except ValueError:
        raise wrong from None
    return Prune(ratio, criterion=name, structure="block")


def _parse_quant(args: list[str], name: str):
    if not args:
        raise PihError("expected a bit width (e.g. rtn:4, gptq:3:g128)")
    try:
        bits = int(args[0])
    except ValueError:
        raise PihError(f"the bit width {args[0]!r} is not an integer") from None
    kw: dict[str, Any] = {"group": "channel", "symmetric": False, "scale": "absmax", "update": name}
    for opt in args[1:]:
        o = opt.strip().lower()
        if o in ("channel", "tensor"):
            kw["group"] = o
        elif o.startswith("g") and o[1:].isdigit():
            kw["group"] = int(o[1:])
        elif o in ("sym", "asym"):
            kw["symmetric"] = o == "sym"
        elif o in ("absmax", "mse"):
            kw["scale"] = o
        elif o in ("stochastic", "nearest"):
            if o == "stochastic" and name != "none":
                raise PihError("stochastic rounding is an option of rtn only")
            kw["rounding"] = o
        else:
            raise PihError(f"unknown option {opt!r}; options: gN, channel, tensor, sym, asym, absmax, mse, "
                           "stochastic")
    return Quantize(bits, **kw)


# the built-in parsers, for a plugin's method with the same command-line syntax
parse_ratio_or_nm = _parse_prune  # NAME:RATIO or NAME:N:M
parse_bits = _parse_quant  # NAME:BITS[:gG|:tensor][:sym|:asym][:mse]


def _builtins() -> None:
    every = ("unstructured", "nm", "row", "head", "block")  # what a spec may say; each backend refuses what it lacks
    registry.register_method(registry.Method("magnitude", "prune", "none", every,
                           syntax="magnitude:RATIO | magnitude:N:M", description="smallest |W| (layer-wise)",
                           parse=_parse_prune))
    registry.register_method(registry.Method("wanda", "prune", "norms", every,
                           syntax="wanda:RATIO | wanda:N:M", description="|W_ij|·||X_j||, per output row",
                           parse=_parse_prune))
    registry.register_method(registry.Method("sparsegpt", "prune", "hessian", every, updates_kept=True,
                           syntax="sparsegpt:RATIO | sparsegpt:N:M",
                           description="OBS mask from w²/[H⁻¹]_jj² with the weight update", parse=_parse_prune))
    registry.register_method(registry.Method("loss", "prune", "none", ("row", "head", "block"),
                           cli="blocks", syntax="blocks:RATIO",
                           description="remove what raises the measured loss least (block removal, SLEB-like)",
                           parse=_parse_blocks))
    registry.register_method(registry.Method("none", "quantize", "none", cli="rtn", syntax="rtn:BITS[:OPTION...]",
                           description="round to nearest on a uniform grid (options gN channel tensor sym asym "
                           "absmax mse stochastic)", parse=_parse_quant))
    registry.register_method(registry.Method("gptq", "quantize", "hessian", updates_kept=True,
                           syntax="gptq:BITS[:OPTION...]", description="column-wise error feedback (OBS), same options",
                           parse=_parse_quant))


_builtins()
