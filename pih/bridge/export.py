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
from .blocks import walk
from .conv import weight_matrix
from .models import LoadedModel


def export_layers(lm: LoadedModel, calib: torch.Tensor, path: str | Path, layers: list[str] | None = None,
                  max_tokens: int = 4096, meta: dict | None = None) -> Path:
    """Write the ``W::``/``X::`` arrays of ``layers`` (default: every compressible linear) to ``path``."""
    out: dict[str, np.ndarray] = {}
    wanted = set(layers) if layers else None
    for step in walk(lm, calib, 8, stats="rows", sequential=False, layers=wanted):
        for n, m in step.layers.items():  # a conv's rows are its unfolded receptive fields (pih.bridge.conv)
            out[f"W::{step.full(n)}"] = weight_matrix(m).detach().float().cpu().numpy()
            out[f"X::{step.full(n)}"] = torch.cat(step.stats[n].rows)[:max_tokens].numpy()
    if wanted is not None:
        missing = wanted - {k[3:] for k in out if k.startswith("W::")}
        if missing:
            raise bad("layers", sorted(missing)[:3], "not linear layers of the model's blocks")
    out["meta"] = np.array(json.dumps({"model": lm.name, **(meta or {})}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return path
