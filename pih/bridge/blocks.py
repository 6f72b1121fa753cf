"""A model's blocks and their calibration inputs: capture, forward passes, statistics, and the one walk over them.

Every consumer of calibration inputs block by block — the engine's layer-wise stages and block removal, ``pih
advise``'s layer-wise measurement, the sensitivities of the pair analysis and the export for ``sim`` — goes through
:func:`walk`: it captures the inputs of block 0 for each calibration batch, yields each block with its inputs and
the statistics of the layers asked for, and advances the inputs to the next block, either through the block as the
consumer left it (``sequential``: the compressed block, as GPTQ, SparseGPT and Wanda calibrate) or from the dense
outputs computed with the statistics.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .conv import input_rows, n_cols
from .models import LoadedModel, linears_of, model_inputs

STAT_KINDS = ("norms", "hessian", "rows")


class _Caught(Exception):
    pass


def _skip_forward(hidden_states, *args, **kwargs):
    return hidden_states


def set_removed(lm: LoadedModel, removed: Iterable[int]) -> None:
    """Make exactly the blocks in ``removed`` pass their input through (weights stay in place)."""
    removed = set(removed)
    for i, blk in enumerate(lm.blocks()):
        if i in removed:
            blk.forward = _skip_forward
        elif "forward" in blk.__dict__:
            del blk.forward


def layer_names(lm: LoadedModel) -> list[str]:
    """Full names of the compressible linear layers, in forward order (the bridge's units for MixedPrecision)."""
    out = []
    for i, blk in enumerate(lm.blocks()):
        out += [f"{lm.block_name(i)}.{n}" for n in linears_of(blk)]
    return out


class LayerKwargs(dict):
    """Block 0's keyword arguments, with each block's own (``by_block``) for models whose blocks receive different
    ones (sliding vs full attention masks, Gemma 3's local vs global rotary embeddings)."""

    def __init__(self, first: dict, by_block: dict[int, dict]):
        super().__init__(first)
        self.by_block = by_block


def block_kwargs(block: nn.Module, kw: dict) -> dict:
    """The keyword arguments ``block`` receives in the model's own forward pass."""
    return kw.by_block.get(id(block), kw) if isinstance(kw, LayerKwargs) else kw


def _capture_per_block(lm: LoadedModel, calib: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """Like :func:`capture_block_inputs`, recording every block's keyword arguments: each block's forward is
    replaced by a recorder that passes its input on, the last one stops the forward pass."""
    blocks = list(lm.blocks())
    saved = [blk.__dict__.get("forward") for blk in blocks]
    caught: list[tuple[torch.Tensor, dict]] = []
    rec: dict = {}

    def recorder(i):
        def fwd(hidden_states, *args, **kwargs):
            if i == 0:
                rec["hs"] = hidden_states.detach()
            rec[id(blocks[i])] = dict(kwargs)
            if i == len(blocks) - 1:
                raise _Caught
            return hidden_states
        return fwd

    try:
        for i, blk in enumerate(blocks):
            blk.forward = recorder(i)
        with torch.no_grad():
            for s in range(0, calib.shape[0], batch_size):
                rec.clear()
                try:
                    lm.model(**model_inputs(lm, calib[s : s + batch_size]))
                except _Caught:
                    pass
                by = {k: v for k, v in rec.items() if k != "hs"}
                caught.append((rec["hs"], LayerKwargs(by[id(blocks[0])], by)))
    finally:
        for blk, f in zip(blocks, saved, strict=True):
            if f is None:
                blk.__dict__.pop("forward", None)
            else:
                blk.forward = f
    return caught


def capture_block_inputs(lm: LoadedModel, calib: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """Inputs (hidden states, keyword arguments) of block 0 for each calibration batch."""
    from .families import per_layer_kwargs

    if per_layer_kwargs(lm):
        return _capture_per_block(lm, calib, batch_size)
    blocks = lm.blocks()
    first = blocks[0]
    caught: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs.pop("hidden_states")
        caught.append((hs.detach(), dict(kwargs)))
        raise _Caught

    h = first.register_forward_pre_hook(hook, with_kwargs=True)
    saved = first.__dict__.pop("forward", None)
    try:
        with torch.no_grad():
            for s in range(0, calib.shape[0], batch_size):
                try:
                    lm.model(**model_inputs(lm, calib[s : s + batch_size]))
                except _Caught:
                    pass
    finally:
        h.remove()
        if saved is not None:
            first.forward = saved
    return caught


def run_block(block: nn.Module, inps: list[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
    out = []
    with torch.no_grad():
        for hs, kw in inps:
            y = block(hs, **block_kwargs(block, kw))
            out.append((y[0] if isinstance(y, tuple) else y, kw))
    return out


GRAM_BANDS = 4  # row bands of a CPU Gram product xᵀx (measured fastest on 576- and 1536-wide inputs)


def add_gram(H: torch.Tensor, x: torch.Tensor, bands: int = GRAM_BANDS) -> None:
    """``H += xᵀx`` in place, for a symmetric ``H`` (cols, cols) and rows ``x`` (n, cols).

    On the CPU, for 512 columns or more, only the upper triangle's row bands are multiplied (``bands`` products of
    ``x[:, band]ᵀ x[:, band start:]``, about (bands + 1) / (2 bands) of the FLOPs) and each band's block left of
    the diagonal is its mirror: every entry is the same dot product over the same rows as in the full product, and
    the CPU GEMM sums it in the same order, so the result is bitwise the full one (tested; 1.2-1.9x faster on 2
    threads). Elsewhere (GPUs, small inputs) the full product."""
    cols = x.shape[1]
    if x.device.type != "cpu" or cols < 512 or bands < 2:
        H += x.t() @ x
        return
    xt = x.t()
    edges = [round(cols * k / bands) for k in range(bands + 1)]
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        band = xt[a:b] @ x[:, a:]  # rows a:b of xᵀx, from the diagonal on
        H[a:b, a:] += band
        if b < cols:
            H[b:, a:b] += band[:, b - a:].t()


class _Stats:
    """Running calibration statistics of one linear layer's input: H = 2/n Σ x xᵀ and mean ||x_j||²."""

    def __init__(self, cols: int, device, hessian: bool):
        self.H = torch.zeros(cols, cols, device=device, dtype=torch.float32) if hessian else None
        self.norm2 = torch.zeros(cols, device=device, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor, module: nn.Module | None = None) -> None:
        x, tmp = input_rows(module, x.detach())  # a conv's input: its unfolded receptive fields (pih.bridge.conv)
        x = x.float()
        total = self.n + tmp
        if self.H is not None:
            self.H *= self.n / total
            add_gram(self.H, (2 / total) ** 0.5 * x)
        self.norm2 *= self.n / total
        self.norm2 += (x**2).sum(0) / total
        self.n = total


class _Rows:
    """The input rows of one layer themselves (float32, on the CPU), as the export for ``sim`` writes them."""

    def __init__(self, cols: int, device, hessian: bool = False):
        self.rows: list[torch.Tensor] = []
        self.n = 0

    def add(self, x: torch.Tensor, module: nn.Module | None = None) -> None:
        rows, tmp = input_rows(module, x.detach())
        self.rows.append(rows.float().cpu())
        self.n += tmp


class _Enough(Exception):
    """Raised inside a block's forward pass once every wanted layer has taken its input (outputs not needed)."""


def stats_and_outputs(block: nn.Module, inps, hessian: bool, only: set[str] | None = None,
                      collector: Callable | None = None, outputs: bool = True,
                      single_calls: dict | None = None):
    """One forward pass of ``block`` over ``inps``: the calibration statistics of its compressible layers (those
    named in ``only``, default all) and the block's outputs. ``collector(cols, device, hessian)`` makes one
    layer's statistics (default :class:`_Stats`; :class:`_Rows` keeps the rows themselves).

    Layers fed the same input tensor (q/k/v the attention's normalised input, gate/up the MLP's) share one
    :class:`_Stats`: it is computed once per distinct input, so the Hessian of q, k and v is one product, and the
    same floats as three separate ones. Sharing is decided in the first batch (the same tensor object, unmodified,
    reaching two linear layers in one forward pass) and checked in every later one.

    ``outputs=False`` (a sequential walk, which recomputes the outputs through the compressed block): the outputs
    are None, and a batch's forward pass stops as soon as every wanted layer has taken its input (a LLaMA block
    then skips down_proj and the residual: about a fifth of its FLOPs) — once a full pass has shown that each
    wanted layer runs exactly once per pass. ``single_calls`` keeps that finding across blocks of one class
    (a dict the caller holds, keyed by block class and wanted layers), so only the first block's first batch
    runs whole. The statistics are those of full passes: the same inputs reach the same layers."""
    make = collector or _Stats
    lins = {n: m for n, m in linears_of(block).items() if only is None or n in only}
    stats = {n: make(n_cols(m), m.weight.device, hessian) for n, m in lins.items()}
    shares: dict[str, str] = {}  # layer -> the layer whose statistics it uses
    seen: list[tuple[torch.Tensor, int, str]] = []  # this forward pass: (input, its version, the layer that took it)
    calls = {"n": 0}
    counts: dict[str, int] = {}  # layer -> its calls in the current forward pass
    known = {} if single_calls is None else single_calls
    key = (type(block), frozenset(lins))

    def settle():  # after a whole first pass: may later passes stop early?
        if calls["n"] == 1 and not outputs and key not in known:
            known[key] = len(counts) == len(lins) and all(c == 1 for c in counts.values())

    def start(module, args, kwargs):
        settle()
        seen.clear()
        counts.clear()
        calls["n"] += 1

    def record(mod, x, n):
        src = next((m for t, v, m in seen if t is x and v == x._version and m != n), None)
        if calls["n"] == 1 and stats[n].n == 0 and n not in shares and src is not None \
                and isinstance(mod, nn.Linear) and isinstance(lins[src], nn.Linear):
            shares[n] = shares.get(src, src)
            stats[n] = stats[shares[n]]
            return
        if n in shares:
            if src is None or shares.get(src, src) != shares[n]:  # pragma: no cover - a block's forward is fixed
                raise RuntimeError(f"layer {n} shared the input of {shares[n]} in the first calibration batch but "
                                   "not in a later one")
            return
        stats[n].add(x, mod)
        seen.append((x, x._version, n))

    def hook(mod, a, n):  # before the layer runs: its input is all it needs
        record(mod, a[0], n)
        counts[n] = counts.get(n, 0) + 1
        if not outputs and known.get(key, False) and len(counts) == len(lins):
            raise _Enough

    hooks = [block.register_forward_pre_hook(start, with_kwargs=True)]
    hooks += [m.register_forward_pre_hook(lambda mod, a, n=n: hook(mod, a, n)) for n, m in lins.items()]
    try:
        if outputs:
            outs = run_block(block, inps)
        else:
            outs = None
            with torch.no_grad():
                for hs, kw in inps:
                    try:
                        block(hs, **block_kwargs(block, kw))
                    except _Enough:
                        pass
            settle()
    finally:
        for h in hooks:
            h.remove()
        seen.clear()
    return stats, outs


def collect_stats(block: nn.Module, inps, hessian: bool) -> dict[str, Any]:
    """The calibration statistics of every compressible layer of ``block`` (:func:`stats_and_outputs`)."""
    return stats_and_outputs(block, inps, hessian)[0]


# -- the walk ---------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One block of a :func:`walk`: its index and module, its compressible layers (those asked for), its
    calibration inputs (None in a walk without them) and the statistics of those layers (empty without)."""

    index: int
    block: nn.Module
    prefix: str  # the block's module name: a layer's full name is f"{prefix}.{name}"
    layers: OrderedDict[str, nn.Module]
    inputs: list[tuple[torch.Tensor, dict]] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def full(self, name: str) -> str:
        return f"{self.prefix}.{name}"


def walk(lm: LoadedModel, calib: torch.Tensor | None = None, batch_size: int = 8, *, stats: str | None = None,
         sequential: bool = True, layers: Iterable[str] | None = None, skip: Iterable[int] = (),
         until: int | None = None, desc: str | None = None, progress: bool = False) -> Iterator[Step]:
    """Each block of ``lm`` in forward order with its calibration inputs (see the module docstring).

    ``calib`` None: no inputs and no forward pass (the blocks and their layers only). ``stats``: None | "norms" |
    "hessian" | "rows": the statistics of the block's wanted layers, from one forward pass over its inputs before
    the step (which also gives the block's dense outputs). ``sequential``: the next block's inputs are this block's
    outputs as the step left it (True) or as it was before the step (False: dense calibration). ``layers``: the
    full names of the layers wanted (None: every one); a block without any still advances the inputs. ``skip``:
    blocks not visited (removed blocks: they pass their input through). ``until``: the last block visited (default
    the last one); nothing runs after it. ``desc``/``progress``: a progress bar over the blocks."""
    from tqdm.auto import tqdm

    if stats is not None and stats not in STAT_KINDS:
        raise ValueError(f"stats={stats!r}: must be None or one of {STAT_KINDS}")
    blocks = lm.blocks()
    last = len(blocks) - 1 if until is None else until
    wanted = None if layers is None else set(layers)
    skip = set(skip)
    inps = capture_block_inputs(lm, calib, batch_size) if calib is not None else None
    make = {"rows": _Rows}.get(stats, _Stats)
    single_calls: dict = {}  # block class -> each wanted layer runs once per forward pass (stats_and_outputs)
    for i in tqdm(range(last + 1), desc=desc, file=sys.stderr, disable=not progress, leave=False):
        if i in skip:
            continue  # a removed block passes its input through unchanged
        blk = blocks[i]
        prefix = lm.block_name(i)
        todo = OrderedDict((n, m) for n, m in linears_of(blk).items() if wanted is None or f"{prefix}.{n}" in wanted)
        st, outs = {}, None
        if inps is not None and stats is not None and todo:
            need_outs = not sequential and i < last
            st, outs = stats_and_outputs(blk, inps, stats == "hessian", set(todo), make, outputs=need_outs,
                                         single_calls=single_calls)
        yield Step(i, blk, prefix, todo, inps, st)
        if inps is not None and i < last:
            inps = outs if outs is not None else run_block(blk, inps)  # outputs only a dense walk asked for
