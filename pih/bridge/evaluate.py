"""Evaluation: perplexity with the GPTQ/Wanda protocol, and top-1 accuracy for classifiers.

Also :func:`calib_loss`, the loss block removal ranks blocks by.

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

from .models import LoadedModel, model_inputs


def token_losses(lm: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token of the windows ``x`` (n, seqlen): an (n, seqlen − 1) float32 tensor.

    For a causal LM of the adapter table (whose logits are its LM head applied to the decoder's last hidden states,
    with the family's final soft-cap or scaling, :func:`pih.bridge.families.logits_of`) the head and the
    cross-entropy run one window at a time, so the (n, seqlen, vocabulary) logits are never held at once (1.6 GB for
    8 windows of 512 tokens of SmolLM2's 49152 words, with its log-softmax) and each cross-entropy reduces over
    contiguous rows. Any other model: its logits, as returned."""
    ce = torch.nn.functional.cross_entropy
    y = x[:, 1:].to(lm.device)
    if lm.arch == "llama" and lm.family is not None:
        from .families import logits_of

        h = lm.model.get_decoder()(**model_inputs(lm, x)).last_hidden_state
        return torch.stack([ce(logits_of(lm, h[b, :-1]).float(), y[b], reduction="none") for b in range(h.shape[0])])
    logits = lm.model(**model_inputs(lm, x)).logits.float()
    return ce(logits[:, :-1].transpose(1, 2), y, reduction="none")


def perplexity(lm: LoadedModel, windows: torch.Tensor, batch_size: int = 8, progress: bool = False) -> dict:
    """Perplexity of ``lm`` on ``windows`` (n, seqlen)."""
    n, seqlen = windows.shape
    losses = []
    with torch.inference_mode():
        for s in tqdm(range(0, n, batch_size), desc="ppl", file=sys.stderr, disable=not progress, leave=False):
            losses += token_losses(lm, windows[s : s + batch_size]).mean(1).cpu().tolist()
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


def calib_loss(lm: LoadedModel, calib: torch.Tensor, batch_size: int, labels: torch.Tensor | None = None) -> float:
    """Mean cross-entropy of the model on the calibration set (tokens for LMs, labels for classifiers)."""
    tot, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, calib.shape[0], batch_size):
            x = calib[s : s + batch_size]
            if lm.arch == "llama":
                tot += float(token_losses(lm, x).sum())
                n += x[:, 1:].numel()
            else:
                logits = lm.model(**model_inputs(lm, x)).logits.float()
                y = labels[s : s + batch_size].to(logits.device)
                tot += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                n += y.numel()
    return tot / n
