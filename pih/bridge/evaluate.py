"""Evaluation: perplexity with the GPTQ/Wanda protocol, and top-1 accuracy for classifiers.

Perplexity: the evaluation text is tokenized once, cut into non-overlapping windows of ``seqlen`` tokens from its
start (at most ``max_tokens`` tokens), and each window is scored on its own; the mean token cross-entropy of a
window (seqlen − 1 predicted tokens) is averaged over windows, and ppl = exp(mean), exactly as the GPTQ, SparseGPT
and Wanda evaluation code computes it (their nll = loss·seqlen, summed, divided by n·seqlen).
"""

from __future__ import annotations

import math
import sys

import torch
from tqdm.auto import tqdm

from .engine import model_inputs
from .models import LoadedModel


def perplexity(lm: LoadedModel, windows: torch.Tensor, batch_size: int = 8, progress: bool = False) -> dict:
    """Perplexity of ``lm`` on ``windows`` (n, seqlen)."""
    n, seqlen = windows.shape
    losses = []
    with torch.no_grad():
        for s in tqdm(range(0, n, batch_size), desc="ppl", file=sys.stderr, disable=not progress, leave=False):
            x = windows[s : s + batch_size]
            logits = lm.model(**model_inputs(lm, x)).logits.float()
            y = x[:, 1:].to(logits.device)
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), y, reduction="none").mean(1)
            losses += ce.cpu().tolist()
    nll = sum(losses) / len(losses)
    return {"ppl": math.exp(nll) if nll < 700 else float("inf"), "nll": nll, "n_windows": n, "seqlen": seqlen,
            "n_tokens": n * seqlen}


def accuracy(lm: LoadedModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> dict:
    """Top-1 accuracy of a classifier on ``images`` (n, C, H, W) with integer ``labels``."""
    correct = 0
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            logits = lm.model(**model_inputs(lm, images[s : s + batch_size])).logits
            correct += int((logits.argmax(-1).cpu() == labels[s : s + batch_size]).sum())
    return {"accuracy": correct / images.shape[0], "n_images": int(images.shape[0])}
