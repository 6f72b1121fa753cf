"""Export per-layer weights and calibration inputs of a real model as ``.npz`` for ``sim``.

Format (one ``.npz``, float32): ``W::<layer>`` = weight (out_features, in_features) and ``X::<layer>`` = the
layer's calibration inputs (n_tokens, in_features), captured on the dense model block by block, at most
``max_tokens`` rows (the first ones). ``<layer>`` is the module's full name, e.g.
``model.layers.0.self_attn.q_proj``. A ``meta`` entry holds a JSON string (model, data, seqlen, seed). A
convolution is exported as its 2-D view: ``W`` (out, in·kh·kw) and ``X`` its unfolded receptive fields
(n_positions, in·kh·kw), so ``X @ W.T`` is the conv's output at each position (:mod:`pih.bridge.conv`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ._common import bad
from .conv import input_rows, weight_matrix
from .engine import capture_block_inputs, run_block
from .models import LoadedModel, linears_of


def _grabber(bucket: list):
    def hook(mod, args, out):  # a conv's rows are its unfolded receptive fields (pih.bridge.conv)
        bucket.append(input_rows(mod, args[0].detach())[0].float().cpu())

    return hook


def export_layers(lm: LoadedModel, calib: torch.Tensor, path: str | Path, layers: list[str] | None = None,
                  max_tokens: int = 4096, meta: dict | None = None) -> Path:
    """Write the ``W::``/``X::`` arrays of ``layers`` (default: every compressible linear) to ``path``."""
    out: dict[str, np.ndarray] = {}
    inps = capture_block_inputs(lm, calib, 8)
    wanted = set(layers) if layers else None
    for i, blk in enumerate(lm.blocks()):
        lins = linears_of(blk)
        names = {n: f"{lm.block_name(i)}.{n}" for n in lins}
        todo = {n: m for n, m in lins.items() if wanted is None or names[n] in wanted}
        if todo:
            got: dict[str, list[torch.Tensor]] = {n: [] for n in todo}
            hooks = [m.register_forward_hook(_grabber(got[n])) for n, m in todo.items()]
            try:
                outs = run_block(blk, inps)
            finally:
                for h in hooks:
                    h.remove()
            for n, m in todo.items():
                out[f"W::{names[n]}"] = weight_matrix(m).detach().float().cpu().numpy()
                out[f"X::{names[n]}"] = torch.cat(got[n])[:max_tokens].numpy()
        else:
            outs = run_block(blk, inps)
        inps = outs
    if wanted is not None:
        missing = wanted - {k[3:] for k in out if k.startswith("W::")}
        if missing:
            raise bad("layers", sorted(missing)[:3], "not linear layers of the model's blocks")
    out["meta"] = np.array(json.dumps({"model": lm.name, **(meta or {})}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return path
