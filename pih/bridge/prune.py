"""Tensor-level pruners: magnitude, Wanda, SparseGPT (unstructured and N:M).

Comparison groups follow the reference implementations: magnitude ranks |W| over the whole layer; Wanda ranks
|W_ij|·||X_j||₂ within each output row; SparseGPT selects its mask per block of ``blocksize`` (128) columns from
w²/[H⁻¹]_jj² and updates the remaining weights (OBS). N:M ("N kept out of every M consecutive inputs") prunes
M−N per group of every row. Exactly ``int(ratio · size)`` weights are pruned per comparison group; ties are
broken at random with a seeded generator (never by index). An existing mask (weights pruned by an earlier
stage) is kept: those weights are pruned first and count towards the ratio, which is the layer's total sparsity.
"""

from __future__ import annotations

import torch

from ._common import bad
from .quant import prepare_hessian
from .settings import SELECTIONS
from .sweep import obs_sweep, obs_sweep_compiled, select_smallest, use_compiled


def _rand_like(x: torch.Tensor, gen: torch.Generator | torch.Tensor | None) -> torch.Tensor:
    """Uniform tie-break keys for the entries of ``x``, drawn from ``gen``; or ``gen`` itself when it is a tensor of
    priorities laid out like ``x`` in row-major order (the registry's explicit priorities: what the parity suite
    gives the simulation and the bridge alike)."""
    if isinstance(gen, torch.Tensor):
        if gen.numel() != x.numel():
            raise ValueError(f"{gen.numel()} tie-break priorities for {x.numel()} entries")
        return gen.reshape(x.shape).to(x.device)
    return torch.rand(x.shape, generator=gen, device="cpu").to(x.device)


def _cols(gen, i1: int, i2: int):
    """The tie-break keys of columns ``i1:i2``: the priorities' slice, or the generator itself."""
    return gen[:, i1:i2] if isinstance(gen, torch.Tensor) else gen


def smallest_mask(metric: torch.Tensor, k: int, dim: int | None, gen: torch.Generator | None) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of ``metric`` (over all entries if ``dim`` is None, else per
    slice along the last dim), ties broken at random.

    The order is lexicographic in (metric, r) with r uniform random numbers drawn from ``gen`` (one per entry):
    everything below the k-th smallest value is taken, and of the entries equal to it those with the smallest r
    (:func:`pih.bridge.sweep.select_smallest`).
    """
    if k <= 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    shape = metric.shape
    m = metric.reshape(1, -1) if dim is None else metric.reshape(-1, shape[-1])
    r = _rand_like(m.reshape(-1) if dim is None else m, gen).reshape(m.shape)
    return select_smallest(m, r, k).reshape(shape)


def reference_mask(metric: torch.Tensor, k: int, rule: str) -> torch.Tensor:
    """The reference implementations' selection of ``k`` entries (``selection = "reference"``). ``rule``:
    ``threshold`` (SparseGPT's block mask, magnitude: over the whole tensor, every entry ``<=`` the value at
    position k of the sorted metric: k + 1 entries, more on ties), ``sort`` (Wanda, per row: the first k of a stable
    sort, ties by index), ``topk`` (N:M, per group along the last dim: ``torch.topk`` of the k smallest)."""
    if k <= 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    if rule == "threshold":
        flat = metric.reshape(-1)
        if k >= flat.numel():
            return torch.ones_like(metric, dtype=torch.bool)
        return metric <= torch.sort(flat)[0][k]
    shape = metric.shape
    m = metric.reshape(-1, shape[-1])
    if k >= m.shape[-1]:
        return torch.ones(shape, dtype=torch.bool, device=metric.device)
    idx = torch.topk(m, k, dim=1, largest=False)[1] if rule == "topk" else torch.sort(m, dim=-1, stable=True)[1][:, :k]
    return torch.zeros_like(m, dtype=torch.bool).scatter_(1, idx, True).reshape(shape)


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise bad("selection", selection, f"must be one of {SELECTIONS}")


def _nm_mask(metric: torch.Tensor, nm: tuple[int, int], gen, selection: str = "exact") -> torch.Tensor:
    n, m = nm
    rows, cols = metric.shape
    if cols % m:
        raise bad("structure", f"{n}:{m}", f"M={m} does not divide in_features={cols}")
    g = metric.reshape(rows, cols // m, m)
    if selection == "reference":
        return reference_mask(g, m - n, "topk").reshape(rows, cols)
    return smallest_mask(g, m - n, dim=-1, gen=gen).reshape(rows, cols)


def _prep_metric(metric: torch.Tensor, existing: torch.Tensor | None) -> torch.Tensor:
    metric = metric.float()
    if existing is not None:
        metric = metric.masked_fill(existing, float("-inf"))
    return metric


def magnitude(w: torch.Tensor, ratio: float, nm: tuple[int, int] | None = None,
              existing: torch.Tensor | None = None, gen: torch.Generator | None = None,
              selection: str = "exact") -> torch.Tensor:
    """Mask (True = pruned) of magnitude pruning, layer-wise (or per N:M group). ``selection``: ``exact`` (exactly
    int(ratio · size) weights, ties at random) or ``reference`` (:func:`reference_mask`: Wanda's code's magnitude
    pruning, every |w| <= the sorted value at that position)."""
    _check_selection(selection)
    metric = _prep_metric(w.abs(), existing)
    if nm is not None:
        mask = _nm_mask(metric, nm, gen, selection)
    elif selection == "reference":
        mask = reference_mask(metric, int(w.numel() * ratio), "threshold")
    else:
        mask = smallest_mask(metric, int(w.numel() * ratio), None, gen)
    return mask if existing is None else mask | existing


def wanda(w: torch.Tensor, col_norm2: torch.Tensor, ratio: float, nm: tuple[int, int] | None = None,
          existing: torch.Tensor | None = None, gen: torch.Generator | None = None,
          selection: str = "exact") -> torch.Tensor:
    """Mask of Wanda: metric |W_ij|·sqrt(mean ||X_j||²), compared within each output row (or N:M group).
    ``selection = "reference"``: ties by index (the reference code's stable sort) instead of at random."""
    _check_selection(selection)
    metric = _prep_metric(w.abs().float() * torch.sqrt(col_norm2.float())[None, :], existing)
    if nm is not None:
        mask = _nm_mask(metric, nm, gen, selection)
    elif selection == "reference":
        mask = reference_mask(metric, int(w.shape[1] * ratio), "sort")
    else:
        mask = smallest_mask(metric, int(w.shape[1] * ratio), -1, gen)
    return mask if existing is None else mask | existing


def sparsegpt(w: torch.Tensor, H: torch.Tensor, ratio: float, nm: tuple[int, int] | None = None,
              blocksize: int = 128, percdamp: float = 0.01, existing: torch.Tensor | None = None,
              gen: torch.Generator | None = None, selection: str = "exact", hessian_dtype: str = "float32",
              compiled: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): returns (updated weights, mask). Mask chosen per ``blocksize``
    columns (unstructured) or per M columns (N:M) from w²/[H⁻¹]_jj², with OBS updates of the remaining weights.

    ``selection``: ``exact`` (exactly int(ratio · block size) per block, ties at random) or ``reference`` (the
    reference code's: every w²/d² <= the sorted value at that position, i.e. k + 1 per block; N:M by
    ``torch.topk``). ``hessian_dtype``: the precision of H⁻¹ (``pih.bridge.quant.prepare_hessian``).
    ``compiled``: the compiled column sweep (default) or the Python loop (``pih.bridge.sweep``; bitwise equal)."""
    _check_selection(selection)
    W = w.detach().clone().float()
    rows, cols = W.shape
    if nm is not None and cols % nm[1]:
        raise bad("structure", f"{nm[0]}:{nm[1]}", f"M={nm[1]} does not divide in_features={cols}")
    if nm is not None and blocksize % nm[1]:
        raise bad("blocksize", blocksize, f"must be a multiple of M={nm[1]} for {nm[0]}:{nm[1]} SparseGPT (an N:M "
                  "group may not straddle two lazy blocks)")
    Hinv, _ = prepare_hessian(H.float(), W, percdamp, hessian_dtype)
    E = existing if existing is not None else torch.zeros_like(W, dtype=torch.bool)
    M = torch.zeros_like(W, dtype=torch.bool)
    d = torch.diag(Hinv)
    mb = M  # the current block's mask, columns as rows

    def start_block(i1: int, i2: int, Wb: torch.Tensor) -> None:
        nonlocal mb
        if nm is None:  # one mask for the whole block, from w²/[H⁻¹]_jj² at the block's start
            tmp = _prep_metric(Wb.t() ** 2 / d[None, i1:i2] ** 2, E[:, i1:i2])
            k = int(tmp.numel() * ratio)
            if selection == "reference":
                sel = reference_mask(tmp, k, "threshold")
            else:
                sel = smallest_mask(tmp, k, None, _cols(gen, i1, i2))
            mask1 = sel | E[:, i1:i2]
        else:
            mask1 = E[:, i1:i2].clone()
        M[:, i1:i2] = mask1
        mb = M[:, i1:i2].t()

    if use_compiled(compiled):
        Q = obs_sweep_compiled(W, Hinv, blocksize, M, start_block=start_block, nm=nm, existing=E, gen=gen,
                               topk=selection == "reference")
        return Q.to(w.dtype), M

    def column(c: int, i: int, Wb: torch.Tensor) -> torch.Tensor:
        if nm is not None and i % nm[1] == 0:  # N:M: the group's mask from its current weights
            j = slice(c, c + nm[1])
            tmp = _prep_metric(Wb[i : i + nm[1]].t() ** 2 / d[None, j] ** 2, E[:, j])
            M[:, j] |= _nm_mask(tmp, nm, _cols(gen, c, c + nm[1]), selection)
        return Wb[i].masked_fill(mb[i], 0)

    W = obs_sweep(W, Hinv, blocksize, column, start_block)
    return W.to(w.dtype), M
