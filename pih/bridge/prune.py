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
from .quant import obs_sweep, prepare_hessian


def _rand_like(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape, generator=gen, device="cpu").to(x.device)


def smallest_mask(metric: torch.Tensor, k: int, dim: int | None, gen: torch.Generator | None) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of ``metric`` (over all entries if ``dim`` is None, else per
    slice along the last dim), ties broken at random.

    The order is lexicographic in (metric, r) with r uniform random numbers drawn from ``gen`` (one per entry):
    everything below the k-th smallest value is taken, and of the entries equal to it those with the smallest r.
    """
    if k <= 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    shape = metric.shape
    m = metric.reshape(1, -1) if dim is None else metric.reshape(-1, shape[-1])
    r = _rand_like(m.reshape(-1) if dim is None else m, gen).reshape(m.shape)
    if k >= m.shape[-1]:
        return torch.ones(shape, dtype=torch.bool, device=metric.device)
    if bool(torch.isnan(m).any()):  # NaN sorts last: rank by (metric, r) with two sorts
        o1 = torch.argsort(r, dim=-1)
        o2 = torch.argsort(torch.gather(m, -1, o1), dim=-1, stable=True)
        out = torch.zeros_like(m, dtype=torch.bool)
        return out.scatter_(-1, torch.gather(o1, -1, o2)[..., :k], True).reshape(shape)
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
    return out.reshape(shape)


def _nm_mask(metric: torch.Tensor, nm: tuple[int, int], gen) -> torch.Tensor:
    n, m = nm
    rows, cols = metric.shape
    if cols % m:
        raise bad("structure", f"{n}:{m}", f"M={m} does not divide in_features={cols}")
    g = metric.reshape(rows, cols // m, m)
    return smallest_mask(g, m - n, dim=-1, gen=gen).reshape(rows, cols)


def _prep_metric(metric: torch.Tensor, existing: torch.Tensor | None) -> torch.Tensor:
    metric = metric.float()
    if existing is not None:
        metric = metric.masked_fill(existing, float("-inf"))
    return metric


def magnitude(w: torch.Tensor, ratio: float, nm: tuple[int, int] | None = None,
              existing: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mask (True = pruned) of magnitude pruning, layer-wise (or per N:M group)."""
    metric = _prep_metric(w.abs(), existing)
    if nm is not None:
        mask = _nm_mask(metric, nm, gen)
    else:
        mask = smallest_mask(metric, int(w.numel() * ratio), None, gen)
    return mask if existing is None else mask | existing


def wanda(w: torch.Tensor, col_norm2: torch.Tensor, ratio: float, nm: tuple[int, int] | None = None,
          existing: torch.Tensor | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mask of Wanda: metric |W_ij|·sqrt(mean ||X_j||²), compared within each output row (or N:M group)."""
    metric = _prep_metric(w.abs().float() * torch.sqrt(col_norm2.float())[None, :], existing)
    if nm is not None:
        mask = _nm_mask(metric, nm, gen)
    else:
        mask = smallest_mask(metric, int(w.shape[1] * ratio), -1, gen)
    return mask if existing is None else mask | existing


def sparsegpt(w: torch.Tensor, H: torch.Tensor, ratio: float, nm: tuple[int, int] | None = None,
              blocksize: int = 128, percdamp: float = 0.01, existing: torch.Tensor | None = None,
              gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): returns (updated weights, mask). Mask chosen per ``blocksize``
    columns (unstructured) or per M columns (N:M) from w²/[H⁻¹]_jj², with OBS updates of the remaining weights."""
    W = w.detach().clone().float()
    rows, cols = W.shape
    if nm is not None and cols % nm[1]:
        raise bad("structure", f"{nm[0]}:{nm[1]}", f"M={nm[1]} does not divide in_features={cols}")
    Hinv, _ = prepare_hessian(H.float(), W, percdamp)
    E = existing if existing is not None else torch.zeros_like(W, dtype=torch.bool)
    M = torch.zeros_like(W, dtype=torch.bool)
    d = torch.diag(Hinv)
    mb = M  # the current block's mask, columns as rows

    def start_block(i1: int, i2: int, Wb: torch.Tensor) -> None:
        nonlocal mb
        if nm is None:  # one mask for the whole block, from w²/[H⁻¹]_jj² at the block's start
            tmp = _prep_metric(Wb.t() ** 2 / d[None, i1:i2] ** 2, E[:, i1:i2])
            mask1 = smallest_mask(tmp, int(tmp.numel() * ratio), None, gen) | E[:, i1:i2]
        else:
            mask1 = E[:, i1:i2].clone()
        M[:, i1:i2] = mask1
        mb = M[:, i1:i2].t()

    def column(c: int, i: int, Wb: torch.Tensor) -> torch.Tensor:
        if nm is not None and i % nm[1] == 0:  # N:M: the group's mask from its current weights
            j = slice(c, c + nm[1])
            tmp = _prep_metric(Wb[i : i + nm[1]].t() ** 2 / d[None, j] ** 2, E[:, j])
            M[:, j] |= smallest_mask(tmp, nm[1] - nm[0], -1, gen)
        return Wb[i].masked_fill(mb[i], 0)

    W = obs_sweep(W, Hinv, blocksize, column, start_block)
    return W.to(w.dtype), M
