"""One record type for every result, and an append-only store that survives crashes.

A record says how its figure was obtained (provenance) and what was done (the pipeline, in application order).
Records whose protocols differ (backend, model, data, sequence length, calibration, metric, settings) are never
compared: :func:`require_same_protocol` raises :class:`ProtocolMismatch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .errors import PihError, ProtocolMismatch, bad
from .methods import Spec, pipeline_label, spec_from_dict

_VERSION_PACKAGES = ("pih", "numpy", "scipy", "jax", "jaxlib", "torch", "transformers")


def package_versions() -> dict[str, str]:
    """Versions of Python and of the relevant packages that are already imported (nothing is imported here)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        if name == "pih" or name in sys.modules:
            with contextlib.suppress(metadata.PackageNotFoundError):
                out[name] = metadata.version(name)
    return out


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    if dataclasses.is_dataclass(o) and hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _digest(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Provenance:
    """How a figure was obtained. Everything but ``seed`` and ``versions`` defines the protocol."""

    backend: str
    model: str
    data: str
    metric: str
    seqlen: int | None = None
    calibration: str | None = None
    calibration_size: int | None = None
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=package_versions, compare=False)

    def __post_init__(self) -> None:
        for name in ("backend", "model", "data", "metric"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise bad(name, v, "provenance needs a non-empty string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise bad("seed", self.seed, "must be an integer")
        object.__setattr__(self, "seed", int(self.seed))

    def protocol_dict(self) -> dict[str, Any]:
        d = self.to_dict()
        d.pop("seed")
        d.pop("versions")
        return d

    @property
    def protocol(self) -> str:
        return _digest(self.protocol_dict())

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        return cls(**d)


def record_key(provenance: Provenance, pipeline: tuple, point: dict) -> str:
    """Deterministic identity of a result: protocol, seed, pipeline and grid point."""
    return _digest(
        {
            "protocol": provenance.protocol,
            "seed": provenance.seed,
            "pipeline": [s.to_dict() for s in pipeline],
            "point": point,
        }
    )


@dataclass(frozen=True)
class Task:
    """A unit of work in a sweep: what to compute, identified by the key its record will have."""

    provenance: Provenance
    pipeline: tuple[Spec, ...]
    point: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return record_key(self.provenance, tuple(self.pipeline), self.point)


@dataclass(frozen=True)
class Record:
    """A measured figure: ``value`` of ``provenance.metric`` (higher is better) after ``pipeline``."""

    provenance: Provenance
    pipeline: tuple[Spec, ...]
    value: float
    point: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipeline", tuple(self.pipeline))
        if not isinstance(self.value, (int, float, np.floating, np.integer)) or isinstance(self.value, bool):
            raise bad("value", self.value, "a record's value must be a number")
        object.__setattr__(self, "value", float(self.value))

    @property
    def key(self) -> str:
        return record_key(self.provenance, self.pipeline, self.point)

    @property
    def order(self) -> str:
        return pipeline_label(self.pipeline)

    @property
    def protocol(self) -> str:
        return self.provenance.protocol

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "provenance": self.provenance.to_dict(),
            "pipeline": [s.to_dict() for s in self.pipeline],
            "order": self.order,
            "value": self.value,
            "point": self.point,
            "extras": self.extras,
            "arrays": sorted(self.arrays) if self.arrays else [],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            provenance=Provenance.from_dict(d["provenance"]),
            pipeline=tuple(spec_from_dict(s) for s in d["pipeline"]),
            value=d["value"],
            point=d.get("point", {}),
            extras=d.get("extras", {}),
        )


def require_same_protocol(*records: Record) -> str:
    """Return the common protocol of ``records``; raise ProtocolMismatch if they differ."""
    if not records:
        raise bad("records", records, "nothing to compare")
    protos = {r.protocol for r in records}
    if len(protos) > 1:
        first = records[0].provenance.protocol_dict()
        for r in records[1:]:
            other = r.provenance.protocol_dict()
            diff = sorted(k for k in first if first[k] != other.get(k))
            if diff:
                detail = ", ".join(f"{k}: {first[k]!r} vs {other.get(k)!r}" for k in diff)
                raise ProtocolMismatch(f"records from different protocols cannot be compared ({detail})")
    return protos.pop()


class Store:
    """Append-only results store: ``records.jsonl`` plus ``arrays/<key>.npz`` sidecars in one folder.

    Each appended record is flushed and fsync'ed before ``append`` returns, so a finished point survives a crash.
    A torn last line (a crash mid-write) is ignored when reading and cut off before the next append. Sidecar
    arrays are written first, atomically, so a record line never names arrays that are missing.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise bad("path", str(path), "a results store is a folder, and this is a file")
        self.path.mkdir(parents=True, exist_ok=True)
        self.file = self.path / "records.jsonl"
        self._keys: set[str] | None = None

    @classmethod
    def existing(cls, path: str | os.PathLike, name: str = "store") -> Store:
        """Open a store that must already hold records (for commands that only read)."""
        if not (Path(path) / "records.jsonl").exists():
            raise bad(name, str(path), "no records.jsonl there")
        return cls(path)

    # -- reading -------------------------------------------------------------------------------------------
    def _lines(self) -> Iterator[dict]:
        if not self.file.exists():
            return
        with open(self.file, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # torn tail of an interrupted append
                    return
                raise PihError(f"store={str(self.file)!r}: corrupt record on line {i + 1}") from None

    def raw(self) -> list[dict]:
        return list(self._lines())

    def records(self) -> list[Record]:
        return [Record.from_dict(d) for d in self._lines()]

    def keys(self) -> set[str]:
        if self._keys is None:
            self._keys = {d["key"] for d in self._lines()}
        return self._keys

    def has(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str) -> Record:
        for d in self._lines():
            if d["key"] == key:
                return Record.from_dict(d)
        raise bad("key", key, f"not in store {str(self.path)!r}")

    def load_arrays(self, record: Record | str) -> dict[str, np.ndarray]:
        key = record if isinstance(record, str) else record.key
        f = self.path / "arrays" / f"{key}.npz"
        if not f.exists():
            return {}
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    # -- writing -------------------------------------------------------------------------------------------
    def _repair_tail(self, fh) -> None:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(0)
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)
        fh.seek(0, os.SEEK_END)

    def append(self, record: Record) -> str:
        """Write ``record`` durably; refuse a second record with the same key."""
        key = record.key
        if self.has(key):
            raise bad("record", key, "already stored (the store is append-only; resume skips stored keys)")
        line = _canonical({**record.to_dict(), "created": time.time()}).encode() + b"\n"
        if record.arrays:
            adir = self.path / "arrays"
            adir.mkdir(exist_ok=True)
            tmp = adir / f".{key}.{os.getpid()}.tmp.npz"
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{k: np.asarray(v) for k, v in record.arrays.items()})
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, adir / f"{key}.npz")
        with open(self.file, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._repair_tail(fh)
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        self.keys().add(key)
        return key


def run_sweep(store: Store, tasks: Iterable[Task], compute: Callable[[Task], Record], progress: bool = True,
              desc: str = "sweep") -> list[Record]:
    """Compute each task whose key is not stored yet, storing each record as soon as it is finished.

    Returns the records of all tasks, in task order (stored ones read back, new ones as computed). A killed sweep
    rerun with the same tasks recomputes only what was not stored.
    """
    tasks = list(tasks)
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise bad("tasks", f"{len(keys)} tasks", "two tasks have the same key (same protocol, seed, pipeline, point)")
    stored = {d["key"]: d for d in store.raw() if d["key"] in set(keys)}
    out: dict[str, Record] = {k: Record.from_dict(d) for k, d in stored.items()}
    todo = [t for t in tasks if t.key not in stored]
    for task in tqdm(todo, desc=desc, disable=not progress, file=sys.stderr, initial=0):
        rec = compute(task)
        if not isinstance(rec, Record):
            raise bad("compute", type(rec).__name__, "must return a Record")
        if rec.key != task.key:
            raise bad("compute", rec.key, f"returned a record for another task (expected key {task.key})")
        store.append(rec)
        out[rec.key] = rec
    return [out[k] for k in keys]
