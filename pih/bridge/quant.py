"""Tensor-level quantizers: the uniform grid (GPTQ's conventions), round-to-nearest, and GPTQ.

Grid conventions (as in the GPTQ reference code, so results compare): ``maxq = 2**bits - 1``; asymmetric:
``scale = (xmax - xmin) / maxq``, ``zero = round(-xmin / scale)`` with ``xmin <= 0 <= xmax``; symmetric:
``xmax = max(|xmin|, xmax)``, ``xmin = -xmax`` (when ``xmin < 0``), ``zero = (maxq + 1) / 2``. Dequantized value
``scale * (clamp(round(w / scale) + zero, 0, maxq) - zero)``. Zero is always on the grid, so a pruned (zero)
weight stays exactly zero. ``scale="mse"`` searches a shrink factor of the range (GPTQ's grid search, norm 2.4,
100 points, up to 80 % shrink). Grouping: ``channel`` (one scale per output row), ``tensor``, or ``g`` consecutive
input columns per scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._common import bad
from .settings import HESSIAN_DTYPES
from .sweep import obs_sweep, obs_sweep_compiled, use_compiled


@dataclass
class Grid:
    """A quantization grid for one weight matrix: per-(row, group) scale and zero point, column -> group map."""

    scale: torch.Tensor  # (rows, n_groups) or (1, n_groups) for per-tensor
    zero: torch.Tensor  # same shape
    maxq: int
    g_idx: torch.Tensor  # (cols,) long

    def expand(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale[:, self.g_idx], self.zero[:, self.g_idx]

    def quantize(self, w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s, z = self.expand()
        q = _qdq(w.float(), s, z, self.maxq).to(w.dtype)
        if mask is not None:
            q = q.masked_fill(mask, 0)
        return q

    def on_grid(self, w: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
        """Boolean map of the entries of ``w`` that lie on this grid (within ``atol``)."""
        return (self.quantize(w) - w).abs() <= atol + 1e-6 * self.expand()[0].abs()

    def to(self, device) -> Grid:
        return Grid(self.scale.to(device), self.zero.to(device), self.maxq, self.g_idx.to(device))


def _qdq(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int, noise: torch.Tensor | None = None):
    y = x / scale
    r = torch.floor(y + noise) if noise is not None else torch.round(y)
    q = torch.clamp(r + zero, 0, maxq)
    return scale * (q - zero)


def find_params(x: torch.Tensor, bits: int, symmetric: bool, scale_mode: str = "absmax", norm: float = 2.4,
                grid: int = 100, maxshrink: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of the uniform grid for ``x`` (rows, k)."""
    x = x.float()
    maxq = 2**bits - 1
    zeros = torch.zeros(x.shape[0], device=x.device)
    xmin = torch.minimum(x.min(1).values, zeros)
    xmax = torch.maximum(x.max(1).values, zeros)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        neg = xmin < 0
        xmin = torch.where(neg, -xmax, xmin)
    both0 = (xmin == 0) & (xmax == 0)
    xmin = torch.where(both0, -torch.ones_like(xmin), xmin)
    xmax = torch.where(both0, torch.ones_like(xmax), xmax)

    def params(lo, hi):
        s = (hi - lo) / maxq
        z = torch.full_like(s, (maxq + 1) / 2) if symmetric else torch.round(-lo / s)
        return s, z

    scale, zero = params(xmin, xmax)
    if scale_mode == "mse":
        best = torch.full((x.shape[0],), float("inf"), device=x.device)
        for i in range(int(maxshrink * grid)):
            p = 1 - i / grid
            s1, z1 = params(p * xmin, p * xmax)
            err = (_qdq(x, s1[:, None], z1[:, None], maxq) - x).abs().pow(norm).sum(1)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s1, scale)
            zero = torch.where(better, z1, zero)
    elif scale_mode != "absmax":
        raise bad("scale", scale_mode, "must be 'absmax' or 'mse'")
    return scale, zero


def group_size(group, cols: int) -> int | None:
    """Columns per group: None for per-tensor, ``cols`` for per-channel, else the integer (must divide cols)."""
    if group == "tensor":
        return None
    if group == "channel":
        return cols
    if isinstance(group, int) and not isinstance(group, bool) and group > 0:
        if cols % group:
            raise bad("group", group, f"does not divide in_features={cols}")
        return group
    raise bad("group", group, "must be 'channel', 'tensor' or a positive integer")


def rtn_grid(w: torch.Tensor, bits: int, group="channel", symmetric: bool = True, scale_mode: str = "absmax") -> Grid:
    """The round-to-nearest grid of ``w`` (rows, cols)."""
    rows, cols = w.shape
    maxq = 2**bits - 1
    g = group_size(group, cols)
    if g is None:
        s, z = find_params(w.reshape(1, -1), bits, symmetric, scale_mode)
        return Grid(s[:, None], z[:, None], maxq, torch.zeros(cols, dtype=torch.long, device=w.device))
    ng = cols // g
    s, z = find_params(w.reshape(rows, ng, g).reshape(rows * ng, g), bits, symmetric, scale_mode)
    g_idx = torch.arange(cols, device=w.device) // g
    return Grid(s.reshape(rows, ng), z.reshape(rows, ng), maxq, g_idx)


def rtn(w: torch.Tensor, bits: int, group="channel", symmetric: bool = True, scale_mode: str = "absmax",
        mask: torch.Tensor | None = None, rounding: str = "nearest", generator: torch.Generator | None = None
        ) -> tuple[torch.Tensor, Grid]:
    """Round ``w`` to its grid (stochastic rounding optional, seeded by ``generator``); pruned entries stay 0."""
    grid = rtn_grid(w, bits, group, symmetric, scale_mode)
    if rounding == "nearest":
        return grid.quantize(w, mask), grid
    if rounding != "stochastic":
        raise bad("rounding", rounding, "must be 'nearest' or 'stochastic'")
    s, z = grid.expand()
    if isinstance(generator, torch.Tensor):  # explicit uniform noise, one per entry (the parity suite's)
        noise = generator.reshape(w.shape).to(w.device, torch.float32)
    else:
        noise = torch.rand(w.shape, generator=generator, device="cpu").to(w.device)
    q = _qdq(w.float(), s, z, grid.maxq, noise).to(w.dtype)
    return (q.masked_fill(mask, 0) if mask is not None else q), grid


def prepare_hessian(H: torch.Tensor, w: torch.Tensor, percdamp: float, dtype: str = "float32"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead columns zeroed, damping added, and the upper Cholesky factor of H^-1 (as GPTQ/SparseGPT).

    ``dtype`` is the precision of the damping, the Cholesky factorisations and the inverse: ``float32`` (the
    reference code's: the same factor bit for bit, given the same Hessian) or ``float64`` (then rounded to
    float32 for the sweep, which always runs in float32 as the reference's does)."""
    if dtype not in HESSIAN_DTYPES:
        raise bad("hessian_dtype", dtype, f"must be one of {HESSIAN_DTYPES}")
    H = H.clone().to(getattr(torch, dtype))
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    H[idx, idx] += damp
    try:
        L = torch.linalg.cholesky(H)
    except RuntimeError as exc:  # pragma: no cover - damping makes this rare
        raise bad("percdamp", percdamp, "the damped Hessian is not positive definite; raise the damping") from exc
    Hinv = torch.cholesky_inverse(L)
    try:
        Hinv = torch.linalg.cholesky(Hinv, upper=True)
    except RuntimeError as exc:  # pragma: no cover - a float32 inverse of an ill-conditioned Hessian
        raise bad("percdamp", percdamp, f"the inverse of the damped Hessian is not positive definite in {dtype}; "
                  "raise the damping or set hessian_dtype = 'float64'") from exc
    return Hinv.float(), dead


def gptq(w: torch.Tensor, H: torch.Tensor, bits: int, group="channel", symmetric: bool = False,
         scale_mode: str = "absmax", act_order: bool = False, blocksize: int = 128, percdamp: float = 0.01,
         mask: torch.Tensor | None = None, hessian_dtype: str = "float32", compiled: bool | None = None
         ) -> tuple[torch.Tensor, Grid]:
    """GPTQ (Frantar et al. 2023): quantize columns in order, feeding each column's error into the rest.

    ``H`` is the calibration Hessian 2/n·XXᵀ of the layer input. Lazy batch updates over ``blocksize`` columns;
    ``act_order`` processes columns by decreasing diag(H). Per-channel grids are fitted once on the whole
    matrix; grouped grids when the first column of each group is reached (on W as of the lazy block's start, as
    the reference code does), on the kept weights only. Entries in ``mask`` (pruned) are forced to zero and their
    error is compensated like any other. ``hessian_dtype``: the precision of H⁻¹ (:func:`prepare_hessian`);
    ``compiled``: the compiled column sweep (default) or the Python loop (``pih.bridge.sweep``; bitwise equal).
    """
    W = w.detach().clone().float()
    rows, cols = W.shape
    maxq = 2**bits - 1
    g = group_size(group, cols)
    Hf = H.float()
    M = mask.clone() if mask is not None else torch.zeros_like(W, dtype=torch.bool)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(Hf), descending=True)
        W, M = W[:, perm], M[:, perm]
        Hf = Hf[perm][:, perm]
    Hinv, _ = prepare_hessian(Hf, W, percdamp, hessian_dtype)
    # Grid parameters: per column (scale, zero) of shape (rows,)
    if g is None:
        s, z = find_params(W.reshape(1, -1), bits, symmetric, scale_mode)
        col_s = s.expand(rows)[:, None].expand(rows, cols).clone()
        col_z = z.expand(rows)[:, None].expand(rows, cols).clone()
        fixed = True
    elif g == cols:
        s, z = find_params(W, bits, symmetric, scale_mode)
        col_s, col_z = s[:, None].expand(rows, cols).clone(), z[:, None].expand(rows, cols).clone()
        fixed = True
    else:
        col_s = torch.empty(rows, cols, device=W.device)
        col_z = torch.empty(rows, cols, device=W.device)
        fixed = False

    def fit_group(c: int) -> None:
        # the group's grid from W as of the start of this lazy block (updated by the earlier blocks, not by the
        # columns before c in this block), as the reference GPTQ code fits it: W[:, i1:i2] is not touched
        # until the block ends (the sweep works on its copy Wb)
        # ... on the weights it will represent: pruned positions (forced to 0, which every grid holds
        # exactly) are left out, whatever value the sweep's compensation has pushed into them
        s, z = find_params(W[:, c : c + g].masked_fill(M[:, c : c + g], 0), bits, symmetric, scale_mode)
        col_s[:, c : c + g] = s[:, None]
        col_z[:, c : c + g] = z[:, None]

    if use_compiled(compiled):
        def start_block(i1: int, i2: int, Wb: torch.Tensor) -> None:
            # W[:, c : c + g] is the same at the block's start as when the sweep reaches column c: fit them now
            for c in range(-(-i1 // g) * g, i2, g):
                fit_group(c)

        Q = obs_sweep_compiled(W, Hinv, blocksize, M, col_s, col_z, maxq, None if fixed else start_block)
    else:
        def column(c: int, i: int, Wb: torch.Tensor) -> torch.Tensor:
            if not fixed and c % g == 0:
                fit_group(c)
            return _qdq(Wb[i], col_s[:, c], col_z[:, c], maxq).masked_fill(M[:, c], 0)

        Q = obs_sweep(W, Hinv, blocksize, column)
    if perm is not None:
        inv = torch.argsort(perm)
        Q, col_s, col_z = Q[:, inv], col_s[:, inv], col_z[:, inv]
    # Express the grid with one column per (row, column) group id: compress identical runs.
    if g is None:
        grid = Grid(col_s[:1, :1].clone(), col_z[:1, :1].clone(), maxq,
                    torch.zeros(cols, dtype=torch.long, device=W.device))
    elif g == cols:
        grid = Grid(col_s[:, :1].clone(), col_z[:, :1].clone(), maxq,
                    torch.zeros(cols, dtype=torch.long, device=W.device))
    else:
        if perm is None:
            gidx = torch.arange(cols, device=W.device) // g
        else:
            gidx = (torch.argsort(perm) // g).to(W.device)  # column -> position in processing order -> group
        ng = cols // g
        S = torch.empty(rows, ng, device=W.device)
        Z = torch.empty(rows, ng, device=W.device)
        S[:, gidx] = col_s
        Z[:, gidx] = col_z
        grid = Grid(S, Z, maxq, gidx)
    return Q.to(w.dtype), grid
