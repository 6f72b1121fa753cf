"""Hadamard rotation of the residual stream (QuaRot-style), exact on the dense model.

For every causal-LM family of the adapter table (:mod:`pih.bridge.families`) whose blocks read the residual stream
only through RMSNorms and write to it only through linear layers (llama, mistral, qwen2/3, gemma, phi3, granite,
...); refused with the reason for the others (post-norms of Gemma 2/3 and OLMo 2, LayerNorm of OLMo and StableLM).
The RMSNorm scales (Gemma: 1 + weight) are folded into the linear layers that read the normalised stream (q, k, v;
gate, up; the LM head), then the residual stream is rotated by an orthogonal Q = H·diag(±1)/√d (a randomized
Hadamard matrix, seeded): the embedding becomes E·Q, every layer reading the stream W·Q, every layer writing to
it Qᵀ·W. Since RMSNorm only divides by ‖x‖/√d and ‖xQ‖ = ‖x‖, the rotated model computes the same function (up to
floating point). Hadamard orders: Sylvester 2^k, times Paley-I factors (q+1 with q prime ≡ 3 mod 4, e.g. 12, 20,
24, 44); when d has no such factorization a seeded random orthogonal matrix is used instead, and the state records it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import bad
from .families import get


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


def _fold(norm: nn.Module, linears: list[nn.Linear], offset: float = 0.0) -> None:
    """Fold a norm's per-channel scale (``offset + weight``) into the linear layers reading its output."""
    w = norm.weight.detach().double() + offset
    for lin in linears:
        lin.weight.data = (lin.weight.detach().double() * w[None, :]).to(lin.weight.dtype)
    norm.weight.data.fill_(1.0 - offset)


def check_rotatable(lm) -> None:
    """Refuse the residual-stream rotation on a model for which it is not exact (one line saying why)."""
    if lm.arch != "llama" or lm.family is None:
        raise bad("rotation", "hadamard", f"the residual-stream rotation is implemented for causal LMs of the "
                  f"LLaMA layout, not {lm.arch}")
    lm.family.check_rotation()
    model = lm.model
    for layer in get(model, lm.family.blocks):
        for norm_name, _ in lm.family.readers:
            norm = getattr(layer, norm_name)
            if getattr(norm, "bias", None) is not None:
                raise bad("rotation", "hadamard", f"{lm.family.model_type}: {norm_name} has a bias; the rotation "
                          "folds only a per-channel scale")


def rotate_model(lm, seed: int = 0) -> str:
    """Rotate ``lm`` (a causal LM of the adapter table whose rotation is exact) in place; returns the kind of
    rotation used."""
    check_rotatable(lm)
    fam = lm.family
    model = lm.model
    emb = get(model, fam.embed)
    head = get(model, fam.head)
    if head.weight is emb.weight:  # untie: the folded final norm makes head and embedding differ
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        model.config.tie_word_embeddings = False
    d = emb.weight.shape[1]
    Q, kind = rotation_matrix(d, seed)
    Q = Q.to(emb.weight.device)
    for layer in get(model, fam.blocks):
        readers = []
        for norm_name, lins in fam.readers:
            mods = [get(layer, n) for n in lins]
            _fold(getattr(layer, norm_name), mods, fam.norm_offset)
            readers += mods
        for lin in readers:
            lin.weight.data = (lin.weight.detach().double() @ Q).to(lin.weight.dtype)
        for lin in (get(layer, n) for n in fam.writers):
            lin.weight.data = (Q.t() @ lin.weight.detach().double()).to(lin.weight.dtype)
            if lin.bias is not None:
                lin.bias.data = (lin.bias.detach().double() @ Q).to(lin.bias.dtype)
    _fold(get(model, fam.final_norm), [head], fam.norm_offset)
    head.weight.data = (head.weight.detach().double() @ Q).to(head.weight.dtype)
    emb.weight.data = (emb.weight.detach().double() @ Q).to(emb.weight.dtype)
    lm.info["rotation"] = kind
    return kind
