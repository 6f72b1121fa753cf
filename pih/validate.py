"""One validation of a run's inputs, done before anything is loaded, trained or computed, with the same rules for
the simulation (``pih simulate``, :mod:`sim`) and the torch bridge (``pih run``, ``pih advise``, ``pih train``).

Every check raises :class:`~pih.errors.PihError` naming the argument and its value. Where an input cannot be
honoured exactly but a close one can (fewer evaluation tokens than asked for, because the text is shorter or
the windows are whole), the caller gets an :class:`Adjustment`: it is printed (as a :class:`PihWarning`) and
stored in every record it affects, never applied silently.

Rules (both backends):

- seeds are integers >= 0 (numpy's and torch's generators refuse negative seeds);
- thread counts are integers >= 0 (0: the library's default);
- a symmetric quantization grid needs at least 2 bits (1 symmetric bit has the levels {-s, 0} only, it cannot
  represent both signs); asymmetric grids accept 1 bit;
- a window length (seqlen) is an integer >= 2, and at most the model's ``max_position_embeddings`` when the model
  has one (read from its ``config.json`` without loading any weight);
- evaluation tokens are an integer >= seqlen; calibration sizes are integers >= 1;
- an output folder is a folder (not a file) that can be written, and a name that becomes a folder (an
  experiment's ``name``) is a single path component: the outputs never land outside the chosen output folder.

Importing this module imports nothing heavy (no numpy array is needed for any check).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PihError, PihWarning, bad

SYMMETRIC_MIN_BITS = 2
#: config.json fields that bound the sequence length, by architecture family (the first one present counts)
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None,
              why: str | None = None) -> int:
    """``value`` as an int; raise unless it is an integer within [minimum, maximum]."""
    if not _is_int(value):
        raise bad(name, value, "must be an integer")
    v = int(value)  # type: ignore[arg-type]
    if minimum is not None and v < minimum:
        raise bad(name, value, why or f"must be >= {minimum}")
    if maximum is not None and v > maximum:
        raise bad(name, value, why or f"must be <= {maximum}")
    return v


def check_seed(name: str, value: object) -> int:
    return check_int(name, value, 0, why="a seed must be an integer >= 0 (random generators refuse negative seeds)")


def check_threads(name: str, value: object) -> int:
    return check_int(name, value, 0, why="must be >= 0 (0: the library's default number of threads)")


def check_number(name: str, value: object, positive: bool = False) -> float:
    """``value`` as a finite float (and > 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise bad(name, value, "must be a number")
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise bad(name, value, "must be a finite number")
    if positive and v <= 0:
        raise bad(name, value, "must be positive")
    return v


def check_bits(name: str, bits: object, symmetric: bool) -> None:
    """Bit widths (one or several) of a quantization grid: a symmetric grid needs at least 2 bits."""
    seq = list(bits) if isinstance(bits, (list, tuple)) else [bits]
    if symmetric and any(b is not None and float(b) < SYMMETRIC_MIN_BITS for b in seq):  # type: ignore[arg-type]
        raise bad(name, bits, f"a symmetric grid needs at least {SYMMETRIC_MIN_BITS} bits (1 symmetric bit cannot "
                  "represent both signs); use symmetric = false for 1-bit grids")


def check_spec(spec: object, name: str = "bits") -> None:
    """The rules a method spec must meet on every backend (beyond its own construction checks)."""
    from .methods import MixedPrecision, Quantize

    if isinstance(spec, Quantize):
        check_bits(name, spec.bits, spec.symmetric)
    elif isinstance(spec, MixedPrecision):
        check_bits(name, [b for b in spec.bits if b], spec.symmetric)


def check_pipeline(specs: Iterable[object], name: str = "pipeline") -> None:
    for i, s in enumerate(specs):
        try:
            check_spec(s)
        except PihError as exc:
            raise PihError(f"{name}[{i}] {getattr(s, 'label', s)}: {exc}") from None


def max_positions(config: Mapping[str, Any]) -> int | None:
    """The longest sequence a model accepts, from its ``config.json`` contents (None: no such bound)."""
    for f in POSITION_FIELDS:
        v = config.get(f)
        if _is_int(v) and int(v) > 0:  # type: ignore[arg-type]
            return int(v)  # type: ignore[arg-type]
    text = config.get("text_config")
    if isinstance(text, Mapping):
        return max_positions(text)
    return None


def folder_max_positions(folder: str | os.PathLike) -> int | None:
    """:func:`max_positions` of ``folder/config.json`` (None when there is none or it is not JSON: the loader
    reports those)."""
    f = Path(folder) / "config.json"
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return max_positions(cfg) if isinstance(cfg, Mapping) else None


def check_seqlen(seqlen: object, limit: int | None = None, model: str | None = None, name: str = "seqlen") -> int:
    s = check_int(name, seqlen, 2, why="a window needs at least 2 tokens")
    if limit is not None and s > limit:
        raise bad(name, seqlen, f"is longer than the model{f' {model}' if model else ''} supports "
                  f"(max_position_embeddings = {limit}); use seqlen <= {limit}")
    return s


def check_eval_tokens(eval_tokens: object, seqlen: int, name: str = "eval_tokens") -> int:
    return check_int(name, eval_tokens, seqlen, why=f"must be an integer >= seqlen={seqlen} (one window at least)")


def check_folder_name(name: str, value: object) -> str:
    """A name that becomes one folder under an output folder: a single path component."""
    if not isinstance(value, str) or not value.strip():
        raise bad(name, value, "must be a non-empty string")
    if "/" in value or "\\" in value or "\0" in value or value in (".", "..") or len(value.encode()) > 200:
        raise bad(name, value, "becomes a folder name: it must be a single path component (no '/', no '..', at "
                  "most 200 bytes); choose the output folder with --out")
    return value


def check_output_folder(name: str, path: str | os.PathLike) -> Path:
    """An output folder that exists or can be created, and can be written; nothing is created here."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise bad(name, str(path), "is a file; give a folder (it will hold the results)")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise bad(name, str(path), f"cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == p else f" (in {str(probe)!r})"
        raise bad(name, str(path), f"cannot be written{where}: permission denied or a read-only file system")
    records = p / "records.jsonl"
    if records.exists() and not os.access(records, os.W_OK):
        raise bad(name, str(path), "its records.jsonl cannot be written (read-only)")
    return p


@dataclass(frozen=True)
class Adjustment:
    """An input that was changed to one that can be honoured: printed and recorded, never silent."""

    name: str
    requested: Any
    used: Any
    why: str

    @property
    def note(self) -> str:
        return f"{self.name}: {self.requested!r} requested, {self.used!r} used ({self.why})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "requested": self.requested, "used": self.used, "why": self.why}

    def announce(self) -> Adjustment:
        warnings.warn(self.note, PihWarning, stacklevel=2)
        return self


def window_adjustment(requested: int, available: int, seqlen: int, source: str = "text",
                      name: str = "eval_tokens") -> Adjustment | None:
    """The evaluation tokens actually used: whole windows of ``seqlen``, at most ``available`` tokens."""
    used = min(requested // seqlen, available // seqlen) * seqlen
    if used == requested:
        return None
    if available // seqlen < requested // seqlen:
        why = f"the {source} has {available} tokens: {available // seqlen} whole windows of {seqlen}"
    else:
        why = f"whole windows of {seqlen} tokens"
    return Adjustment(name, requested, used, why)


def validate_run(*, seed: object, specs: Iterable[object] = (), model_seed: object = None, threads: object = None,
                 seqlen: object = None, eval_tokens: object = None, calibration_size: object = None,
                 max_positions: int | None = None, model: str | None = None, prefix: str = "") -> None:
    """Every check of a run's settings at once (names are reported as ``prefix + field``)."""
    check_seed(f"{prefix}seed", seed)
    if model_seed is not None:
        check_seed(f"{prefix}model_seed", model_seed)
    if threads is not None:
        check_threads(f"{prefix}threads", threads)
    if seqlen is not None:
        s = check_seqlen(seqlen, max_positions, model, f"{prefix}seqlen")
        if eval_tokens is not None:
            check_eval_tokens(eval_tokens, s, f"{prefix}eval_tokens")
    if calibration_size is not None:
        check_int(f"{prefix}calibration_size", calibration_size, 1)
    for s in specs:
        check_spec(s)
