"""Export a compressed model: a Hugging Face safetensors folder, the compressed-tensors format where the scheme fits,
and the masks and grids that made it.

``save_compressed(lm, state, out)`` writes, for the model as compressed (``state``, :class:`CompressionState`):

- ``out/hf/``: ``save_pretrained`` of the compressed weights (quantized weights as their dequantized float values,
  pruned weights as zeros) with removed blocks really removed (``num_hidden_layers`` / ``depths`` and
  ``layer_types`` of the config shortened, blocks renumbered), plus the tokenizer or image processor. Transformers
  reloads it with the same logits; the reload is checked here (``reload_max_abs_logit_diff``).
- ``out/compressed-tensors/``: the same model in the compressed-tensors format (``pack-quantized`` integer weights,
  one scale and zero point per channel, group or tensor, as the quantizer chose them), written with the
  ``compressed-tensors`` package (the format vLLM and llm-compressor load), when the scheme fits: every quantized
  layer a ``Linear`` on an integer grid with contiguous groups and every weight on its grid. Otherwise the reason
  is recorded. compressed-tensors 0.20 writes no sparsity format: zeros are stored as grid values.
- ``out/pih_compression.safetensors``: ``mask::<layer>`` (uint8, 1 = pruned), ``scale::``, ``zero::`` and
  ``g_idx::<layer>`` of every quantized layer, named as in the source model (blocks not renumbered).
- ``out/pih_compression.json``: what was done (pipeline, settings, removed blocks, rotation, the source model's
  identity, the record's provenance when given), the formats written and their checks.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._common import bad
from .conv import weight_matrix
from .models import LoadedModel, linears_of

CT_FORMAT = "pack-quantized"


# -- removed blocks really removed ------------------------------------------------------------------------------
@contextmanager
def blocks_removed(lm: LoadedModel, removed: list[int]):
    """Within the context, ``lm.model`` holds only the blocks not in ``removed`` and its config says so."""
    removed = sorted(set(removed))
    model, cfg = lm.model, lm.model.config
    undo: list = []
    if not removed:
        yield
        return
    try:
        if lm.arch == "resnet":
            stages = model.resnet.encoder.stages
            depths = list(cfg.depths)
            k = 0
            for s, stage in enumerate(stages):
                layers = list(stage.layers)
                keep = [m for j, m in enumerate(layers) if k + j not in removed]
                undo.append((stage, "layers", stage.layers))
                stage.layers = nn.Sequential(*keep)
                depths[s] = len(keep)
                k += len(layers)
            undo.append((cfg, "depths", cfg.depths))
            cfg.depths = depths
        else:
            if lm.arch == "llama":
                from .families import get

                path = lm.family.blocks
                parent = get(model, path.rsplit(".", 1)[0])
                attr = path.rsplit(".", 1)[1]
            else:
                base = getattr(model, "deit", None) or getattr(model, "vit", None)
                parent, attr = (base, "layers") if hasattr(base, "layers") else (base.encoder, "layer")
            blocks = getattr(parent, attr)
            keep = [b for i, b in enumerate(blocks) if i not in removed]
            undo.append((parent, attr, blocks))
            setattr(parent, attr, nn.ModuleList(keep))
            undo.append((cfg, "num_hidden_layers", cfg.num_hidden_layers))
            cfg.num_hidden_layers = len(keep)
            if getattr(cfg, "layer_types", None):
                undo.append((cfg, "layer_types", cfg.layer_types))
                cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in removed]
            for j, b in enumerate(keep):  # the attention's cache slot follows the new numbering
                at = getattr(b, "self_attn", None)
                if at is not None and hasattr(at, "layer_idx"):
                    undo.append((at, "layer_idx", at.layer_idx))
                    at.layer_idx = j
        yield
    finally:
        for obj, attr, val in reversed(undo):
            setattr(obj, attr, val)


# -- the compressed-tensors format ------------------------------------------------------------------------------
def _ct_args(grid, cols: int):
    """(QuantizationArgs kwargs, why not) for one layer's grid."""
    n_groups = grid.scale.shape[1]
    sym = bool(torch.all(grid.zero == (grid.maxq + 1) // 2))
    bits = int(round(torch.log2(torch.tensor(float(grid.maxq + 1))).item()))
    if 2**bits - 1 != grid.maxq:
        return None, f"maxq={grid.maxq} is not 2^b - 1"
    if not torch.equal(grid.zero, grid.zero.round()) or bool((grid.zero < 0).any() or (grid.zero > grid.maxq).any()):
        return None, "zero points are not integers on the grid"
    if grid.scale.shape[0] == 1 and n_groups == 1:
        kw = {"strategy": "tensor"}
    elif n_groups == 1:
        kw = {"strategy": "channel"}
    else:
        g = -(-cols // n_groups)
        if not torch.equal(grid.g_idx.cpu(), torch.arange(cols) // g):
            return None, "groups are not contiguous column blocks (act-order grouping)"
        kw = {"strategy": "group", "group_size": int(g)}
    return {"num_bits": bits, "type": "int", "symmetric": sym, **kw}, None


def ct_fits(lm: LoadedModel, state) -> tuple[dict[str, dict] | None, str | None]:
    """The compressed-tensors arguments of every quantized layer, or why the scheme does not fit."""
    if not state.grids:
        return None, "no quantization stage: compressed-tensors 0.20 has no sparsity-only format"
    out: dict[str, dict] = {}
    for i, blk in enumerate(lm.blocks()):
        if i in state.removed:
            continue
        for n, m in linears_of(blk).items():
            full = f"{lm.block_name(i)}.{n}"
            grid = state.grids.get(full)
            if grid is None:
                return None, f"layer {full} is not quantized (compressed-tensors needs one scheme per layer set)"
            if not isinstance(m, nn.Linear):
                return None, f"layer {full} is a {type(m).__name__}; compressed-tensors quantizes Linear layers"
            args, why = _ct_args(grid, m.in_features)
            if why:
                return None, f"layer {full}: {why}"
            W = weight_matrix(m).float()
            if not bool(grid.to(W.device).on_grid(W).all()):
                return None, f"layer {full}: weights lie off its grid (offgrid policy 'keep')"
            out[full] = args
    return out, None


def _renumber(name: str, lm: LoadedModel, removed: list[int]) -> str:
    """A layer name of the source model as it is named in the saved model (blocks after removed ones shift)."""
    if not removed or lm.arch == "resnet":
        return name if not removed else _renumber_resnet(name, lm, removed)
    prefix = lm.blocks_path() + "."
    m = re.match(re.escape(prefix) + r"(\d+)\.(.*)", name)
    if not m:
        return name
    i = int(m.group(1))
    return f"{prefix}{i - sum(r < i for r in removed)}.{m.group(2)}"


def _renumber_resnet(name: str, lm: LoadedModel, removed: list[int]) -> str:
    stages = lm.model.resnet.encoder.stages
    k = 0
    for s, stage in enumerate(stages):
        n = len(stage.layers)
        for j in range(n):
            pre = f"resnet.encoder.stages.{s}.layers.{j}."
            if name.startswith(pre):
                jj = j - sum(1 for r in removed if k <= r < k + j)
                return f"resnet.encoder.stages.{s}.layers.{jj}." + name[len(pre):]
        k += n
    return name


def _write_ct(lm: LoadedModel, state, hf_dir: Path, out: Path, args: dict[str, dict]) -> None:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), trust_remote_code=False, local_files_only=True,
                                                 dtype=lm.model.dtype)
    groups: dict[str, list[str]] = {}
    for full, a in args.items():
        groups.setdefault(json.dumps(a, sort_keys=True), []).append(_renumber(full, lm, state.removed))
    qc = QuantizationConfig(config_groups={f"group_{k}": QuantizationScheme(targets=names,
                                                                          weights=QuantizationArgs(**json.loads(a)))
                                           for k, (a, names) in enumerate(groups.items())})
    apply_quantization_config(model, qc)
    for full in args:
        mod = model.get_submodule(_renumber(full, lm, state.removed))
        grid = state.grids[full]
        mod.weight_scale.data.copy_(grid.scale.reshape(mod.weight_scale.shape).to(mod.weight_scale.dtype))
        if hasattr(mod, "weight_zero_point"):
            zp = grid.zero - (grid.maxq + 1) // 2  # the signed integer range of compressed-tensors
            mod.weight_zero_point.data.copy_(zp.reshape(mod.weight_zero_point.shape).to(mod.weight_zero_point.dtype))
    comp = ModelCompressor.from_pretrained_model(model, quantization_format=CT_FORMAT)
    comp.compress_model(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    comp.update_config(str(tmp))
    _copy_side_files(lm, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _copy_side_files(lm: LoadedModel, folder: Path) -> None:
    if lm.tokenizer is not None and hasattr(lm.tokenizer, "save_pretrained"):
        lm.tokenizer.save_pretrained(str(folder))
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    data["use_cache"] = True  # the bridge turns the KV cache off for scoring; a saved model generates with it
    cfg.write_text(json.dumps(data, indent=2, sort_keys=True))


# -- the whole export -------------------------------------------------------------------------------------------
def _probe_logits(model, lm: LoadedModel, probe) -> torch.Tensor:
    from .models import model_inputs

    with torch.no_grad():
        return model(**model_inputs(lm, probe)).logits.float().cpu()


def _reload(folder: Path, lm: LoadedModel, ct: bool = False):
    import transformers

    kw: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True, "dtype": lm.model.dtype}
    if ct:
        kw["quantization_config"] = transformers.CompressedTensorsConfig(run_compressed=False)
    if lm.arch == "llama":
        cls = transformers.AutoModelForCausalLM
    else:
        cls = type(lm.model)
    import warnings

    with warnings.catch_warnings():  # passing run_compressed=False next to the folder's own config is intended
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`.*")
        m = cls.from_pretrained(str(folder), **kw)
    if lm.arch == "resnet" and getattr(m.config, "pih_input_size", None):
        from .conv import resize_hook

        resize_hook(m, int(m.config.pih_input_size))
    return m.to(lm.device).eval()


def save_compressed(lm: LoadedModel, state, out: str | Path, probe: torch.Tensor | None = None,
                    formats: tuple[str, ...] = ("hf", "compressed-tensors"), info: dict | None = None,
                    verify: bool = True) -> dict:
    """Write ``lm`` as compressed (``state``) to ``out`` (see the module doc); returns the manifest written to
    ``out/pih_compression.json``. ``probe``: a batch (token windows or images) on which the reloaded folders'
    logits are compared with the model in memory (``verify``)."""
    from safetensors.torch import save_file

    for f in formats:
        if f not in ("hf", "compressed-tensors"):
            raise bad("formats", f, "must be 'hf' and/or 'compressed-tensors'")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    removed = sorted(state.removed)
    manifest: dict[str, Any] = {
        "source_model": lm.name, "source_identity": lm.info.get("identity"), "arch": lm.arch,
        "family": lm.family.model_type if lm.family else lm.model.config.model_type,
        "removed_blocks": removed, "rotated": bool(state.rotated), "rotation": lm.info.get("rotation"),
        "stage_log": state.log, "layer_names": "as in the source model; the saved model renumbers blocks after "
                                                "removed ones", **(info or {}), "formats": {}}
    ref = _probe_logits(lm.model, lm, probe) if (verify and probe is not None) else None
    # masks and grids
    tensors: dict[str, torch.Tensor] = {}
    for n, m in state.masks.items():
        tensors[f"mask::{n}"] = m.to(torch.uint8).contiguous()
    for n, g in state.grids.items():
        tensors[f"scale::{n}"] = g.scale.float().contiguous().cpu()
        tensors[f"zero::{n}"] = g.zero.float().contiguous().cpu()
        tensors[f"g_idx::{n}"] = g.g_idx.to(torch.int32).contiguous().cpu()
    save_file(tensors, str(out / "pih_compression.safetensors"), metadata={"format": "pih-compression"})
    manifest["masks_and_grids"] = {"file": "pih_compression.safetensors", "masks": len(state.masks),
                                   "grids": len(state.grids)}
    hf = out / "hf"
    tmp = hf.with_name("hf.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with blocks_removed(lm, removed):
        lm.model.save_pretrained(str(tmp))
        n_blocks = len(lm.blocks())
    _copy_side_files(lm, tmp)
    shutil.rmtree(hf, ignore_errors=True)
    tmp.rename(hf)
    entry: dict[str, Any] = {"folder": "hf", "blocks": n_blocks}
    if ref is not None:
        entry["reload_max_abs_logit_diff"] = float((_probe_logits(_reload(hf, lm), lm, probe) - ref).abs().max())
    manifest["formats"]["hf"] = entry
    if "compressed-tensors" in formats:
        args, why = ct_fits(lm, state)
        if why is not None:
            manifest["formats"]["compressed-tensors"] = {"written": False, "why_not": why}
        elif lm.arch != "llama":
            manifest["formats"]["compressed-tensors"] = {"written": False, "why_not": "written for causal LMs only"}
        else:
            ct = out / "compressed-tensors"
            _write_ct(lm, state, hf, ct, args)
            entry = {"folder": "compressed-tensors", "format": CT_FORMAT, "written": True,
                     "schemes": sorted({json.dumps(a, sort_keys=True) for a in args.values()})}
            if ref is not None:
                got = _probe_logits(_reload(ct, lm, ct=True), lm, probe)
                entry["reload_max_abs_logit_diff"] = float((got - ref).abs().max())
            manifest["formats"]["compressed-tensors"] = entry
    if "hf" not in formats:
        shutil.rmtree(hf, ignore_errors=True)
        manifest["formats"].pop("hf")
    (out / "pih_compression.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("->", " then ")).strip("_")[:80]


def task_order(task) -> str:
    """A task's order as ``--save-only`` names it: an explicit pipeline's name, else its grid role (P, Q, P->Q,
    Q->P, dense, pipeline), read from its pipeline."""
    from .. import grid_role

    return task.point.get("name") or grid_role(tuple(task.pipeline))


def point_matches(order: str, label: str, select: list[str] | None) -> bool:
    """Whether a grid point is among those ``select`` asks for (its order, e.g. "P->Q", or its pipeline label);
    by default every compressed point (not the dense one)."""
    if not select:
        return order != "dense"
    return order in select or label in select


def save_points(runner, tasks, records, out: str | Path, select: list[str] | None = None,
                progress: bool = True) -> list[dict]:
    """Save the compressed model of every grid point ``select`` asks for (see :func:`point_matches`) under
    ``out/<nn>-<order>-<pipeline>/`` and write ``out/index.json``; each model is recompressed from the runner's
    prefix cache (or from scratch when its record was resumed from the store)."""
    import sys

    from tqdm.auto import tqdm

    from .. import pipeline_label
    from .engine import BridgeSettings

    out = Path(out).expanduser()
    by_key = {r.key: r for r in records}
    chosen = [t for t in tasks if point_matches(task_order(t), pipeline_label(tuple(t.pipeline)), select)]
    if not chosen:
        raise bad("save", select, "no grid point matches (give orders such as P->Q or pipeline labels)")
    index = []
    for k, t in enumerate(tqdm(chosen, desc="save", file=sys.stderr, disable=not progress, leave=False)):
        pipeline = tuple(t.pipeline)
        label = pipeline_label(pipeline)
        settings = BridgeSettings(**{**runner.cfg.settings, **t.point.get("settings", {})})
        state = runner.compress(pipeline, settings)
        rec = by_key.get(t.key)
        folder = out / f"{k:02d}-{_slug(task_order(t))}-{_slug(label) or 'dense'}"
        info = {"pipeline": label, "point": t.point, "specs": [s.to_dict() for s in pipeline],
                "bridge_settings": settings.to_dict()}
        if rec is not None:
            info["provenance"] = {k2: v for k2, v in rec.provenance.to_dict().items() if k2 != "versions"}
            info["metric"] = {runner.metric_key: rec.extras.get(runner.metric_key)}
        probe = runner.calib[: min(2 if runner.lm.arch == "llama" else 4, runner.calib.shape[0])]
        man = save_compressed(runner.lm, state, folder, probe=probe, info=info)
        index.append({"folder": folder.name, "pipeline": label, "order": task_order(t),
                      "formats": {f: v.get("written", True) for f, v in man["formats"].items()},
                      **info.get("metric", {})})
    (out / "index.json").write_text(json.dumps(index, indent=2, default=str))
    return index
