"""Convolutions as matrices: the 2-D view of a ``Conv2d`` weight and the unfolded rows of its input.

The bridge's compressors work on a weight matrix (out, cols) and the rows (samples, cols) of its input. A
``nn.Conv2d`` with weight (out, in, kh, kw) is treated exactly as the reference GPTQ/SparseGPT code treats it: the
matrix is ``weight.reshape(out, in·kh·kw)`` (columns ordered channel-major, then kernel row, then kernel column)
and each input row is one receptive field, ``torch.nn.functional.unfold(x, kernel, dilation, padding, stride)``
(the same (channel, kh, kw) order), so ``conv(x) = W2d @ unfold(x)`` position by position. Wanda's column norms
and the Hessian 2/n·Σ x xᵀ come from these rows; n counts images (the reference's ``nsamples``), as it counts
windows for a linear layer fed (batch, seq, hidden) inputs. Only ``groups=1`` and zero padding are supported:
a grouped (e.g. depthwise) convolution has one weight matrix per group and is refused with a clear error.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import bad

COMPRESSIBLE = (nn.Linear, nn.Conv2d)


def check_layer(mod: nn.Module, name: str = "") -> None:
    """Refuse layers whose weight is not one matrix times unfolded inputs (grouped convs, non-zero padding)."""
    if isinstance(mod, nn.Conv2d):
        where = f"layer {name}: " if name else ""
        if mod.groups != 1:
            raise bad("layer", name or "conv", f"{where}grouped convolution (groups={mod.groups}) is not supported: "
                      "the bridge compresses a conv weight as one (out, in·kh·kw) matrix, which needs groups=1")
        if mod.padding_mode != "zeros":
            raise bad("layer", name or "conv", f"{where}padding_mode={mod.padding_mode!r} is not supported "
                      "(the unfolded calibration rows assume zero padding)")
        _padding(mod)


def _padding(mod: nn.Conv2d) -> tuple[int, int]:
    p = mod.padding
    if p == "valid":
        return (0, 0)
    if p == "same":
        ks, dil = mod.kernel_size, mod.dilation
        if any((d * (k - 1)) % 2 for k, d in zip(ks, dil, strict=True)):
            raise bad("layer", "conv", "padding='same' with an even kernel pads asymmetrically; not supported")
        return tuple(d * (k - 1) // 2 for k, d in zip(ks, dil, strict=True))
    return tuple(p)


def matrix_shape(mod: nn.Module) -> tuple[int, int]:
    """(out, cols) of the layer's 2-D weight view."""
    w = mod.weight
    return (int(w.shape[0]), int(w[0].numel()))


def n_cols(mod: nn.Module) -> int:
    return matrix_shape(mod)[1]


def weight_matrix(mod: nn.Module) -> torch.Tensor:
    """The layer's weight as a 2-D (out, cols) tensor (a view of ``weight.data`` when contiguous)."""
    w = mod.weight.data
    return w if w.dim() == 2 else w.reshape(w.shape[0], -1)


def set_weight_matrix(mod: nn.Module, w2d: torch.Tensor) -> None:
    """Write a 2-D (out, cols) matrix back into the layer's weight (any shape, its dtype)."""
    mod.weight.data.copy_(w2d.reshape(mod.weight.shape).to(mod.weight.dtype))


def unfold_rows(mod: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Receptive fields of a conv input (N, C, H, W) as rows (N·L, C·kh·kw), in the weight's column order."""
    check_layer(mod)
    u = torch.nn.functional.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=_padding(mod),
                                   stride=mod.stride)  # (N, C·kh·kw, L)
    return u.transpose(1, 2).reshape(-1, u.shape[1])


def input_rows(mod: nn.Module | None, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows, n_samples) of a layer input: unfolded patches for a conv, the flattened last dim otherwise.

    n_samples is what the reference code adds to ``nsamples``: the batch size for batched (≥3-D, or 4-D conv)
    inputs, 1 for a 2-D input to a linear layer."""
    if isinstance(mod, nn.Conv2d):
        if x.dim() == 3:
            x = x[None]
        return unfold_rows(mod, x), int(x.shape[0])
    n = x.shape[0] if x.dim() > 2 else 1
    return x.reshape(-1, x.shape[-1]), int(n)


def resize_hook(model: nn.Module, size: int) -> None:
    """Make ``model`` resize ``pixel_values`` to ``size``×``size`` (nearest) when they arrive in another size.

    Used by the tiny ResNet on 8x8 digits: its fixed stem (7x7 conv, stride 2, then a stride-2 max pool) and two
    stride-2 stages would shrink an 8x8 image to 1x1; the digits are upsampled ×4 to 32x32 (each pixel a 4x4
    block), the same in training, calibration and evaluation. The size is stored in the model's config
    (``pih_input_size``)."""

    def hook(module, args, kwargs):
        if args:
            x, rest = args[0], args[1:]
        else:
            x, rest = kwargs.get("pixel_values"), None
        if x is None or x.dim() != 4 or tuple(x.shape[-2:]) == (size, size):
            return None
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
        if rest is not None:
            return (y, *rest), kwargs
        kwargs["pixel_values"] = y
        return args, kwargs

    model.register_forward_pre_hook(hook, with_kwargs=True)
