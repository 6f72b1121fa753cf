"""Shared helpers of the bridge: offline environment, cache folder, devices, seeds."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np

from ..errors import PihError, bad

__all__ = ["PihError", "bad", "cache_dir", "offline_env", "resolve_device", "resolve_dtype", "seed_all", "sha256_text"]


def offline_env() -> None:
    """Forbid hub downloads and telemetry for this process (set before transformers is imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The bridge's cache folder: ``path``, else ``$PIH_CACHE``, else ``~/.cache/pih``."""
    p = Path(path or os.environ.get("PIH_CACHE") or Path.home() / ".cache" / "pih").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def resolve_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise bad("device", device, "not a torch device (cpu, cuda, cuda:0, auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise bad("device", device, "CUDA is not available on this machine")
    return dev


_DTYPES = {"float32": "float32", "fp32": "float32", "float64": "float64", "fp64": "float64",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: str | None):
    import torch

    if dtype in (None, "auto"):
        return torch.float32
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise bad("dtype", dtype, f"must be one of {sorted(set(_DTYPES))}")
    return getattr(torch, _DTYPES[dtype])


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _identity_cache_path(cache: str | None) -> Path:
    return cache_dir(cache) / "identity-cache.json"


def file_digest(path: Path, cache: str | None = None) -> str:
    """SHA-256 of a file's full content, streamed in 4 MiB chunks; cached by (resolved path, size, mtime) in the
    bridge's cache folder, so a second load of an unchanged file only stats it."""
    import hashlib

    real = path.resolve()
    st = real.stat()
    key = str(real)
    store = _identity_cache_path(cache)
    try:
        table = json.loads(store.read_text()) if store.is_file() else {}
    except (json.JSONDecodeError, OSError):
        table = {}
    hit = table.get(key)
    if isinstance(hit, list) and hit[:2] == [st.st_size, st.st_mtime_ns]:
        return hit[2]
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # re-read and write atomically: another process may have added entries meanwhile
        table = json.loads(store.read_text()) if store.is_file() else {}
    except (json.JSONDecodeError, OSError):
        table = {}
    table = {k: v for k, v in table.items() if os.path.exists(k)}  # forget files that are gone
    table[key] = [st.st_size, st.st_mtime_ns, digest]
    tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(table))
        tmp.replace(store)
    except OSError:  # a read-only cache: the digest is still right, only not remembered
        pass
    return digest
