"""One registry of compression methods, and one kernel contract for every backend.

A **method** is a pruning criterion (``Prune(criterion=NAME)``) or a quantizer (``Quantize(update=NAME)``; the
round-to-nearest quantizer is ``update="none"``, CLI name ``rtn``). Its entry says, in one place:

- ``kind`` ("prune" | "quantize") and the spec field that names it;
- ``stats``: the calibration statistics its kernels need: "none", "norms" (the mean squared input per column,
  Wanda) or "hessian" (the Gram matrix of the layer's inputs, OBS methods: SparseGPT, GPTQ);
- ``structures``: for pruners, the structures it supports (unstructured, N:M, row, head, block);
- ``updates_kept``: whether it also moves the weights it keeps (SparseGPT's OBS update), which decides the off-grid
  policy after a quantizer and the granularity its error spreads over;
- ``syntax``/``parse``: its command-line spelling (``wanda:0.5``, ``wanda:2:4``, ``gptq:4``, ``rtn:4:g128:sym``)
  shared by every command that takes a method (``pih advise``, ``pih simulate --methods`` ...).

Each backend registers one **kernel** per method (``register_kernel(NAME, BACKEND, fn)``) against one contract::

    kernel(spec, W, stats, state, key, setting) -> (W_new, state_new)

- ``spec``: the core spec (frozen). ``setting``: its numeric setting — the pruning ratio or the bit width — passed
  apart from the spec so that the simulation can trace it (one compiled function for a whole grid); the bridge
  passes the spec's own value.
- ``W``: one weight matrix (out, in) as the backend's array; ``stats``: a :class:`Stats` (``H`` the inputs' Gram
  matrix up to a positive factor — kernels must not depend on that factor, as OBS updates and Wanda's ranking do
  not —, ``norm2`` its diagonal), filled as the method's ``stats`` asks.
- ``state``: a :class:`KernelState`: ``pruned`` (bool mask, True = pruned by an earlier stage: kept exactly),
  ``grid`` (the last quantizer's grid, backend-specific), ``offgrid`` (the policy for weights an update moves off
  that grid: requantize | keep | forbid), and what the kernel reports back (``moved``: weights moved off the grid).
- ``key``: the randomness (a JAX key in the simulation, a ``torch.Generator`` in the bridge): ties are broken at
  random with it, never by index. ``key`` may instead be an explicit array of tie-break priorities (uniform in
  [0, 1), one per weight, the backend's array type): a kernel given one ranks ties by it instead of drawing, so two
  backends given the same priorities make the same choices (the parity suite does exactly that).
- Counts: a pruner removes :func:`pih.methods.n_pruned` ``(ratio, n)`` units of each comparison group.
- Block removal (``structure="block"``) acts on a whole model, not one matrix: its kernels are registered with
  ``scope="model"`` and receive the backend's model object in place of ``W`` (and no ``stats``).

Users add methods from their own modules: ``register_method`` + one ``register_kernel`` per backend, loaded with
:func:`load_plugins` (entry points ``pih.methods`` / ``pih.assumptions``, or ``--plugin my_module.py`` on the
command line). Registering a name twice is refused; tests use :func:`scoped` to restore the registries.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PihError, bad

STATS = ("none", "norms", "hessian")
BACKENDS = ("sim", "torch")
OFFGRID_POLICIES = ("requantize", "keep", "forbid")


@dataclass(frozen=True)
class Method:
    """A registered compression method (see the module docstring)."""

    name: str  # the spec field's value: Prune.criterion or Quantize.update ("none" for round to nearest)
    kind: str  # "prune" | "quantize"
    stats: str = "none"
    structures: tuple[str, ...] = ("unstructured", "nm")
    updates_kept: bool = False  # moves the weights it keeps (SparseGPT's update, GPTQ's error feedback)
    cli: str | None = None  # command-line name (default: ``name``)
    syntax: str = ""
    description: str = ""
    parse: Callable[[list[str], str], Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise bad("name", self.name, "a method name is a non-empty string without ':'")
        if self.kind not in ("prune", "quantize"):
            raise bad("kind", self.kind, "must be 'prune' or 'quantize'")
        if self.stats not in STATS:
            raise bad("stats", self.stats, f"must be one of {STATS}")

    @property
    def cli_name(self) -> str:
        return self.cli or self.name


@dataclass(frozen=True)
class Stats:
    """Calibration statistics of one layer's inputs, as a kernel receives them (None where not asked for)."""

    H: Any = None  # (in, in) Gram matrix of the inputs, up to a positive factor
    norm2: Any = None  # (in,) mean squared input per column (the Gram diagonal, same factor)


@dataclass(frozen=True)
class KernelState:
    """What earlier stages left on a layer, and what a kernel reports back."""

    pruned: Any = None  # bool mask, True = pruned (kept exactly by every later stage)
    grid: Any = None  # the last quantizer's grid (backend-specific object)
    offgrid: str = "requantize"  # weights a later update moves off ``grid``: requantize | keep | forbid
    moved: Any = 0  # reported: weights a kernel's update moved off ``grid`` (before the policy acted)
    kept: Any = 0  # reported: kept weights when ``moved`` was counted

    def replace(self, **kw) -> KernelState:
        from dataclasses import replace

        return replace(self, **kw)


_METHODS: dict[tuple[str, str], Method] = {}  # (kind, name) -> Method
_KERNELS: dict[tuple[str, str, str, str], Callable] = {}  # (kind, name, backend, scope) -> kernel
_LOADED_PLUGINS: list[str] = []


def register_method(method: Method) -> Method:
    """Add ``method``; refuse a name that is already registered for its kind."""
    k = (method.kind, method.name)
    if k in _METHODS:
        raise bad("method", method.name, f"a {method.kind} method of that name is already registered")
    clash = [m for m in _METHODS.values() if m.kind == method.kind and m.cli_name == method.cli_name]
    if clash:
        raise bad("cli", method.cli_name, f"already the command-line name of {clash[0].name!r}")
    _METHODS[k] = method
    return method


def register_kernel(name: str, backend: str, fn: Callable, kind: str | None = None, scope: str = "layer") -> Callable:
    """Register ``fn`` as ``backend``'s kernel of method ``name`` (``kind`` needed only when a pruner and a
    quantizer share the name; ``scope="model"`` for block removal); refuse a second kernel for the same method,
    backend and scope."""
    if backend not in BACKENDS:
        raise bad("backend", backend, f"must be one of {BACKENDS}")
    if scope not in ("layer", "model"):
        raise bad("scope", scope, "must be 'layer' or 'model'")
    kinds = [kd for (kd, n) in _METHODS if n == name and (kind is None or kd == kind)]
    if not kinds:
        raise bad("method", name, "register the method (register_method) before its kernels")
    if len(kinds) > 1:
        raise bad("kind", kind, f"{name!r} names a pruner and a quantizer: say which")
    k = (kinds[0], name, backend, scope)
    if k in _KERNELS:
        raise bad("kernel", f"{name}/{backend}/{scope}", "already registered")
    _KERNELS[k] = fn
    return fn


def methods(kind: str | None = None) -> list[Method]:
    """Registered methods (of one kind), in registration order."""
    return [m for (kd, _), m in _METHODS.items() if kind is None or kd == kind]


def get_method(kind: str, name: str) -> Method:
    m = _METHODS.get((kind, name))
    if m is None:
        field_name = "criterion" if kind == "prune" else "update"
        names = [x.name for x in methods(kind)]
        raise bad(field_name, name, f"must be one of {tuple(names)} (registered {kind} methods)")
    return m


def method_of(spec) -> Method:
    """The registered method a spec runs: Prune → its criterion; Quantize / MixedPrecision → its update."""
    kind = getattr(spec, "kind", None)
    if kind == "prune":
        return get_method("prune", spec.criterion)
    if kind in ("quantize", "mixed"):
        return get_method("quantize", spec.update)
    raise bad("spec", spec, "not a pruning or quantization spec")


def scope_of(spec) -> str:
    """"model" for block removal (a whole model's blocks are ranked), else "layer"."""
    return "model" if getattr(spec, "structure", None) == "block" else "layer"


def kernel_for(spec, backend: str) -> Callable:
    """``backend``'s kernel for ``spec`` (a joint stage: its pruner's joint kernel); a clear error when that
    backend has none."""
    if getattr(spec, "kind", None) == "joint":
        fn = _KERNELS.get(("joint", spec.prune.criterion, backend, "layer"))
        if fn is None:
            raise PihError(f"joint={spec.label}: no {backend} kernel for a joint {spec.prune.criterion} stage")
        return fn
    m = method_of(spec)
    scope = scope_of(spec)
    fn = _KERNELS.get((m.kind, m.name, backend, scope))
    if fn is None:
        where = {"sim": "the simulation", "torch": "the torch bridge"}.get(backend, backend)
        have = [f"{b}/{sc}" for (kd, n, b, sc) in _KERNELS if (kd, n) == (m.kind, m.name)]
        what = " for block removal" if scope == "model" else ""
        raise PihError(f"{m.kind}={m.cli_name!r}: {where} has no kernel{what} for it"
                       + (f" (registered: {', '.join(have)})" if have else ""))
    return fn


def register_joint_kernel(prune_name: str, backend: str, fn: Callable) -> Callable:
    """Register ``backend``'s kernel of a joint stage whose pruner is ``prune_name`` (SparseGPT's joint mode:
    ``kernel(spec, W, stats, state, key, setting)`` with ``setting = (ratio, bits)``)."""
    get_method("prune", prune_name)
    k = ("joint", prune_name, backend, "layer")
    if k in _KERNELS:
        raise bad("kernel", f"joint {prune_name}/{backend}", "already registered")
    _KERNELS[k] = fn
    return fn


def with_kernel(kind: str, backend: str, scope: str = "layer") -> list[str]:
    """Command-line names of the ``kind`` methods that ``backend`` has a ``scope`` kernel for."""
    return [m.cli_name for m in methods(kind) if (kind, m.name, backend, scope) in _KERNELS]


def has_kernel(spec, backend: str) -> bool:
    try:
        kernel_for(spec, backend)
    except PihError:
        return False
    return True


# -- command-line spelling -----------------------------------------------------------------------------------
def parse_method(text: str, kind: str):
    """A spec from its command-line spelling: ``NAME:ARGS`` (see each method's ``syntax``)."""
    t = str(text).strip()
    name = t.split(":", 1)[0].strip().lower()
    flag = "--prune" if kind == "prune" else "--quantize"
    cands = [m for m in methods(kind) if m.cli_name == name]
    if not cands:
        names = ", ".join(m.cli_name for m in methods(kind))
        raise PihError(f"{flag}={text!r}: unknown {kind} method {name!r}; known: {names}")
    m = cands[0]
    if m.parse is None:
        raise PihError(f"{flag}={text!r}: {name!r} has no command-line syntax")
    args = t.split(":")[1:]
    try:
        return m.parse(args, m.name)
    except PihError as exc:
        raise PihError(f"{flag}={text!r}: {exc}") from None


def syntax_help(kind: str) -> str:
    return "\n".join(f"      {m.syntax or m.cli_name}" + (f"   ({m.description})" if m.description else "")
                     for m in methods(kind))


# -- user extensions -------------------------------------------------------------------------------------------
def load_plugin(ref: str) -> None:
    """Import a user module that registers methods or assumption sets: a dotted module name, or a path to a
    ``.py`` file. Loading the same plugin twice is a no-op."""
    if ref in _LOADED_PLUGINS:
        return
    p = Path(ref)
    try:
        if p.suffix == ".py":
            if not p.is_file():
                raise bad("plugin", ref, "no such file")
            name = f"pih_plugin_{abs(hash(str(p.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, p)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(ref)
    except PihError:
        raise
    except ImportError as exc:
        raise bad("plugin", ref, f"cannot be imported: {exc}") from None
    _LOADED_PLUGINS.append(ref)


def load_entry_points() -> list[str]:
    """Import every installed plugin that declares an entry point in the ``pih.methods`` or ``pih.assumptions``
    group (the entry point's value is the module to import). Returns their names."""
    from importlib.metadata import entry_points

    done = []
    for group in ("pih.methods", "pih.assumptions"):
        for ep in entry_points(group=group):
            load_plugin(ep.value.split(":", 1)[0])
            done.append(ep.name)
    return done


_BUILTIN_HOOKS: list[Callable[[], None]] = []  # each backend's "register my built-in kernels" (idempotent)


def on_restore(hook: Callable[[], None]) -> None:
    """``hook`` re-registers a backend's built-in kernels; :func:`scoped` calls it on exit, so a backend first
    imported inside a scoped block keeps its kernels after it."""
    if hook not in _BUILTIN_HOOKS:
        _BUILTIN_HOOKS.append(hook)


def register_builtins(backend: str, table, joint: dict[str, Callable] | None = None) -> None:
    """Register a backend's built-in kernels: ``table`` rows (method name, kind, scope, kernel), ``joint`` pruner
    name -> joint kernel. Idempotent (a kernel already registered, the backend's or a user's, is left as it is)
    and repeated after every :func:`scoped` block, so a backend first imported inside one keeps its kernels."""

    def hook() -> None:
        for name, kind, scope, fn in table:
            if (kind, name, backend, scope) not in _KERNELS:
                register_kernel(name, backend, fn, kind=kind, scope=scope)
        for name, fn in (joint or {}).items():
            if ("joint", name, backend, "layer") not in _KERNELS:
                register_joint_kernel(name, backend, fn)

    hook()
    on_restore(hook)


@contextlib.contextmanager
def scoped() -> Iterator[None]:
    """Restore the method and kernel registries (and the assumption sets, if the simulation is loaded) on exit."""
    m, k, p = dict(_METHODS), dict(_KERNELS), list(_LOADED_PLUGINS)
    sim_sets = None
    if "sim.assumptions" in sys.modules:
        sim_sets = dict(sys.modules["sim.assumptions"].ASSUMPTION_SETS)
    try:
        yield
    finally:
        _METHODS.clear()
        _METHODS.update(m)
        _KERNELS.clear()
        _KERNELS.update(k)
        _LOADED_PLUGINS[:] = p
        mod = sys.modules.get("sim.assumptions")
        if mod is not None:  # imported inside the block (by a plugin, say): back to what a fresh import registers
            if sim_sets is None:
                sim_sets = {k: v for k, v in mod.ASSUMPTION_SETS.items() if k in mod.BUILTIN_NAMES}
            mod.ASSUMPTION_SETS.clear()
            mod.ASSUMPTION_SETS.update(sim_sets)
        for hook in _BUILTIN_HOOKS:
            hook()
