"""The OBS column sweep GPTQ and SparseGPT share, and the k-smallest selection of the bridge's pruners.

Two implementations of one sweep: :func:`obs_sweep`, the reference loop in Python (a callback per column), and
:func:`obs_sweep_compiled`, the same operations with the column loop of each lazy block compiled by TorchScript
(one interpreter call per block instead of several Python dispatches per column). Both perform the same ATen
operations on the same tensors in the same order, so their weights, masks and grids are bitwise equal (tested
on random cases of every kernel option, ``tests/bridge/test_bridge_sweep.py``); TorchScript's CPU fuser is off by
default in torch, so no operation is fused or contracted. ``$PIH_SWEEP=python`` (or ``compiled=False`` on the
kernels) selects the Python loop, which is also used when TorchScript is unavailable.

:func:`select_smallest` is the one k-smallest rule of the bridge (exactly ``k`` per row, ties in the metric
broken by the random keys ``r``, never by index), shared by magnitude, Wanda, SparseGPT and the compiled N:M
sweep.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch


def select_smallest(m: torch.Tensor, r: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of each row of ``m`` (2-D), ordered lexicographically by
    (m, r): everything below the k-th smallest value, and of the entries equal to it those with the smallest r.
    NaN sorts last. TorchScript-compatible (the compiled N:M sweep calls it)."""
    if k <= 0:
        return torch.zeros_like(m, dtype=torch.bool)
    if k >= m.shape[-1]:
        return torch.ones_like(m, dtype=torch.bool)
    if bool(torch.isnan(m).any()):  # NaN sorts last: rank by (metric, r) with two sorts
        o1 = torch.argsort(r, dim=-1)
        o2 = torch.argsort(torch.gather(m, -1, o1), dim=-1, stable=True)
        out = torch.zeros_like(m, dtype=torch.bool)
        return out.scatter_(-1, torch.gather(o1, -1, o2)[:, :k], True)
    thr = m.kthvalue(k, dim=-1, keepdim=True).values
    out = m < thr
    eq = m == thr
    need = k - out.sum(-1)  # entries still to take among those equal to the threshold (>= 1)
    tie = need < eq.sum(-1)
    out |= eq & ~tie[:, None]
    if bool(tie.any()):  # take the ``need`` tied entries with the smallest r
        if m.shape[0] == 1:
            ie = eq[0].nonzero().squeeze(1)
            out[0, ie[torch.topk(r[0, ie], int(need[0]), largest=False).indices]] = True
        else:
            rows = tie.nonzero().squeeze(1)
            o = torch.argsort(torch.where(eq[rows], r[rows], 2.0), dim=-1)
            take = torch.arange(m.shape[-1], device=m.device)[None, :] < need[rows][:, None]
            out[rows] |= torch.zeros_like(take).scatter_(-1, o, take)
    return out


def _block_loop(Wb: torch.Tensor, Hb: torch.Tensor, Mb: torch.Tensor, Sb: torch.Tensor, Zb: torch.Tensor,
                maxq: float, quant: bool, nm_m: int, nm_k: int, topk: bool, db: torch.Tensor, Eb: torch.Tensor,
                R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of one lazy block (``Wb[i]`` = column i, updated in place): new column = the current one,
    quantized on (Sb[i], Zb[i]) when ``quant``, with the pruned entries ``Mb[i]`` set to 0; its error (w − q)/Hb_ii
    is fed into the block's later columns. N:M (``nm_m`` > 0): at the start of each group of ``nm_m`` columns its
    ``nm_k`` smallest w²/d² per row (``select_smallest`` with the group's keys ``R[g]``, or ``torch.topk`` when
    ``topk``, the reference convention) join ``Mb`` (existing pruned entries ``Eb`` first, as −inf). Returns
    (the block's new columns, its errors as (rows, count), the reference's layout)."""
    count = Wb.shape[0]
    Qb = torch.zeros_like(Wb)
    Err = torch.zeros(Wb.shape[1], count, dtype=Wb.dtype, device=Wb.device)
    for i in range(count):
        if nm_m > 0 and i % nm_m == 0:
            tmp = (Wb[i : i + nm_m].t() ** 2 / db[None, i : i + nm_m] ** 2).masked_fill(Eb[i : i + nm_m].t(),
                                                                                      float("-inf"))
            if topk:
                sel = torch.zeros_like(tmp, dtype=torch.bool)
                sel.scatter_(1, torch.topk(tmp, nm_k, dim=1, largest=False)[1], True)
            else:
                sel = select_smallest(tmp, R[i // nm_m], nm_k)
            Mb[i : i + nm_m].logical_or_(sel.t())  # in place: Mb is a view of the caller's mask
        # the operations of pih.bridge.quant._qdq and of the Python loop, written into their destinations in place
        w = Wb[i]
        q = Qb[i]
        if quant:
            s, z = Sb[i], Zb[i]
            torch.div(w, s, out=q)
            q.round_().add_(z).clamp_(0, maxq).sub_(z).mul_(s)  # s · (clamp(round(w / s) + z, 0, maxq) − z)
            q.masked_fill_(Mb[i], 0)  # pruned entries of a quantized column
        else:
            q.copy_(w).masked_fill_(Mb[i], 0)  # pruned entries of a pruned column
        err = (w - q).div_(Hb[i, i])  # contiguous: the update below reads it once per later column
        Wb[i + 1 :].sub_(Hb[i, i + 1 :, None] * err[None, :])  # column i itself is final: Qb[i]
        Err[:, i] = err
    return Qb, Err


_COMPILED: dict[str, Callable | None] = {}


def _compiled_loop() -> Callable | None:
    """:func:`_block_loop` compiled by TorchScript (once per process), or None where that is unavailable."""
    if "loop" not in _COMPILED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of torch.compile
                _COMPILED["loop"] = torch.jit.script(_block_loop)
        except Exception:  # noqa: BLE001 - no TorchScript (e.g. sources stripped): the Python loop
            _COMPILED["loop"] = None
    return _COMPILED["loop"]


def use_compiled(compiled: bool | None = None) -> bool:
    """Whether the kernels run the compiled sweep: ``compiled`` if given, else unless ``$PIH_SWEEP=python``."""
    if compiled is None:
        compiled = os.environ.get("PIH_SWEEP", "compiled") != "python"
    return bool(compiled) and _compiled_loop() is not None


class _OneThread:
    """Run the enclosed per-column work on one CPU thread (restored afterwards): these small operations only lose
    from a second thread (on a busy 2-core machine 2 threads made them about 20x slower)."""

    def __init__(self, device: torch.device):
        self.on = device.type == "cpu" and torch.get_num_threads() > 1

    def __enter__(self):
        if self.on:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.on:
            torch.set_num_threads(self.threads)


def obs_sweep(W: torch.Tensor, Hinv: torch.Tensor, blocksize: int,
              column: Callable[[int, int, torch.Tensor], torch.Tensor],
              start_block: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """The column sweep GPTQ and SparseGPT share (the lazy-batch OBS update of both reference implementations),
    as a Python loop.

    Columns are replaced in order: ``column(c, i, Wb)`` returns the new column ``c`` (the ``i``-th of its block)
    from its current, error-compensated value ``Wb[i]``; its error (w − q)/[H⁻¹]_cc is fed at once into the later
    columns of the block and, once per block, into the columns after it (``W`` is updated in place). ``Hinv`` is
    the upper Cholesky factor of H⁻¹ (``pih.bridge.quant.prepare_hessian``). ``Wb`` holds the block's current
    columns as rows (``Wb[i]`` is column ``i1 + i``) so that each column is contiguous; ``start_block(i1, i2, Wb)``
    runs before a block's first column. The arithmetic is the reference code's, operation for operation (same
    results), and runs on one CPU thread. Returns the new weights.
    """
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    with _OneThread(W.device):
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            Wb = W[:, i1:i2].t().clone(memory_format=torch.contiguous_format)  # a copy, even for one row
            Qb = torch.zeros_like(Wb)
            Err = torch.zeros(rows, i2 - i1, dtype=W.dtype, device=W.device)  # as the reference: same product
            Hb = Hinv[i1:i2, i1:i2]
            if start_block is not None:
                start_block(i1, i2, Wb)
            for i in range(i2 - i1):
                w = Wb[i]
                q = column(i1 + i, i, Wb)
                Qb[i] = q
                err = (w - q) / Hb[i, i]
                Wb[i + 1 :] -= Hb[i, i + 1 :, None] * err[None, :]  # the later columns of the block (Python)
                Err[:, i] = err
            Q[:, i1:i2] = Qb.t()
            W[:, i2:] -= Err @ Hinv[i1:i2, i2:]  # the block's errors into the later columns (Python loop)
    return Q


def obs_sweep_compiled(W: torch.Tensor, Hinv: torch.Tensor, blocksize: int, mask: torch.Tensor,
                       scale: torch.Tensor | None = None, zero: torch.Tensor | None = None, maxq: int = 0,
                       start_block: Callable[[int, int, torch.Tensor], None] | None = None,
                       nm: tuple[int, int] | None = None, existing: torch.Tensor | None = None,
                       gen: torch.Generator | torch.Tensor | None = None, topk: bool = False) -> torch.Tensor:
    """:func:`obs_sweep` with a fixed per-column rule, each block's column loop compiled (:func:`_block_loop`).

    Column c becomes ``_qdq(w, scale[:, c], zero[:, c], maxq)`` when ``scale`` is given (GPTQ), else ``w`` itself
    (SparseGPT), with ``mask[:, c]`` (True = pruned; updated in place) set to 0. ``start_block(i1, i2, Wb)`` runs
    before a block's columns (SparseGPT's block mask, GPTQ's group grids: both depend only on the block's start).
    ``nm = (n, m)``: SparseGPT's N:M selection at the start of every group of m columns of a block (``existing``:
    entries pruned before, taken first; ``gen``: the random tie-break keys, drawn in the order the Python sweep
    draws them; ``topk``: the reference code's ``torch.topk`` instead). Returns the new weights."""
    loop = _compiled_loop() or _block_loop
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    quant = scale is not None
    empty = torch.zeros(0, device=W.device)
    S = scale if quant else None
    Z = zero if quant else None
    nm_m, nm_k = (nm[1], nm[1] - nm[0]) if nm is not None else (0, 0)
    d = torch.diag(Hinv) if nm is not None else empty
    E = existing if existing is not None else torch.zeros_like(mask)
    with _OneThread(W.device):
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            Wb = W[:, i1:i2].t().clone(memory_format=torch.contiguous_format)  # a copy, even for one row
            Hb = Hinv[i1:i2, i1:i2]
            if start_block is not None:
                start_block(i1, i2, Wb)
            R = empty
            if nm is not None and nm_k > 0 and not topk:  # one key per entry and group, as select_smallest draws
                if isinstance(gen, torch.Tensor):  # explicit priorities (rows, cols): group g's columns
                    R = gen[:, i1:i2].reshape(rows, (i2 - i1) // nm_m, nm_m).permute(1, 0, 2).contiguous()
                    R = R.to(W.device, torch.float32)
                else:
                    R = torch.rand(((i2 - i1) // nm_m, rows, nm_m), generator=gen, device="cpu").to(W.device)
            Qb, Err = loop(Wb, Hb, mask[:, i1:i2].t(), S[:, i1:i2].t() if quant else empty,
                           Z[:, i1:i2].t() if quant else empty, float(maxq), quant, nm_m, nm_k, topk,
                           d[i1:i2] if nm is not None else empty, E[:, i1:i2].t(), R)
            Q[:, i1:i2] = Qb.t()
            W[:, i2:] -= Err @ Hinv[i1:i2, i2:]  # the errors into the later blocks (compiled sweep)
    return Q
