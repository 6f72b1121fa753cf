"""Hadamard rotation of the residual stream (QuaRot-style), exact on the dense model.

The RMSNorm scales are folded into the linear layers that read the normalised stream (q, k, v; gate, up; the LM
head), then the residual stream is rotated by an orthogonal Q = H·diag(±1)/√d (a randomized Hadamard matrix,
seeded): the embedding becomes E·Q, every layer reading the stream W·Q, every layer writing to it Qᵀ·W. Since
RMSNorm only divides by ‖x‖/√d and ‖xQ‖ = ‖x‖, the rotated model computes the same function (up to floating
point). Hadamard orders: Sylvester 2^k, times Paley-I factors (q+1 with q prime ≡ 3 mod 4, e.g. 12, 20, 24, 44);
when d has no such factorization a seeded random orthogonal matrix is used instead, and the state records it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import bad


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % p for p in range(2, int(math.isqrt(q)) + 1))


def _paley(n: int) -> torch.Tensor | None:
    q = n - 1
    if n < 4 or not _is_prime(q) or q % 4 != 3:
        return None
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if i in squares else -1 for i in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    Q = chi[(idx[None, :] - idx[:, None]) % q]
    H = torch.zeros(n, n, dtype=torch.float64)
    H[0, 1:] = 1
    H[1:, 0] = -1
    H[1:, 1:] = Q
    return H + torch.eye(n, dtype=torch.float64)


def _sylvester(k: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(k):
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def hadamard(n: int) -> torch.Tensor | None:
    """A ±1 Hadamard matrix of order ``n`` (H Hᵀ = n I), or None when this construction has none."""
    k = 0
    while n % (2 ** (k + 1)) == 0:
        k += 1
    for kk in range(k, -1, -1):
        m = n // 2**kk
        base = _sylvester(kk)
        if m == 1:
            return base
        p = _paley(m)
        if p is not None:
            return torch.kron(base, p)
        for a in range(4, int(math.isqrt(m)) + 1, 4):
            if m % a == 0 and _paley(a) is not None and _paley(m // a) is not None:
                return torch.kron(base, torch.kron(_paley(a), _paley(m // a)))
    return None


def rotation_matrix(n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Orthogonal n×n matrix (float64): randomized Hadamard when one exists, else seeded random orthogonal."""
    g = torch.Generator().manual_seed(seed)
    H = hadamard(n)
    if H is not None:
        signs = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
        return H * signs[None, :] / math.sqrt(n), "hadamard"
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    Qm, R = torch.linalg.qr(A)
    return Qm * torch.sign(torch.diag(R))[None, :], "random-orthogonal"


def _fold(norm: nn.Module, linears: list[nn.Linear]) -> None:
    w = norm.weight.detach().double()
    for lin in linears:
        lin.weight.data = (lin.weight.detach().double() * w[None, :]).to(lin.weight.dtype)
    norm.weight.data.fill_(1.0)


def rotate_model(lm, seed: int = 0) -> str:
    """Rotate ``lm`` (LLaMA) in place; returns the kind of rotation used."""
    if lm.arch != "llama":
        raise bad("rotation", "hadamard", f"residual-stream rotation is implemented for LLaMA, not {lm.arch}")
    model = lm.model
    emb = model.model.embed_tokens
    if model.lm_head.weight is emb.weight:  # untie: the folded final norm makes head and embedding differ
        model.lm_head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        model.config.tie_word_embeddings = False
    d = emb.weight.shape[1]
    Q, kind = rotation_matrix(d, seed)
    Q = Q.to(emb.weight.device)
    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        _fold(layer.input_layernorm, [at.q_proj, at.k_proj, at.v_proj])
        _fold(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for lin in (at.q_proj, at.k_proj, at.v_proj, mlp.gate_proj, mlp.up_proj):
            lin.weight.data = (lin.weight.detach().double() @ Q).to(lin.weight.dtype)
        for lin in (at.o_proj, mlp.down_proj):
            lin.weight.data = (Q.t() @ lin.weight.detach().double()).to(lin.weight.dtype)
            if lin.bias is not None:
                lin.bias.data = (lin.bias.detach().double() @ Q).to(lin.bias.dtype)
    _fold(model.model.norm, [model.lm_head])
    model.lm_head.weight.data = (model.lm_head.weight.detach().double() @ Q).to(model.lm_head.weight.dtype)
    emb.weight.data = (emb.weight.detach().double() @ Q).to(emb.weight.dtype)
    lm.info["rotation"] = kind
    return kind
