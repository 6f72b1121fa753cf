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
import math
import os
import platform
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .errors import PihError, PihWarning, ProtocolMismatch, StoreError, bad
from .methods import Spec, pipeline_label, spec_from_dict
from .validate import check_seed

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
        object.__setattr__(self, "seed", check_seed("seed", self.seed))

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


GRID_ROLES = ("dense", "P", "Q", "P->Q", "Q->P")


def grid_role(pipeline) -> str:
    """The role of a pipeline in a pruning x quantization grid: "dense" (no method), "P" / "Q" (one method alone),
    "P->Q" (prune first, then quantize: Q∘P), "Q->P" (quantize first), or "pipeline" (anything else: three stages,
    two pruners, mixed precision, a joint stage...)."""
    kinds = tuple(getattr(s, "kind", None) for s in pipeline)
    return {(): "dense", ("prune",): "P", ("quantize",): "Q", ("prune", "quantize"): "P->Q",
            ("quantize", "prune"): "Q->P"}.get(kinds, "pipeline")


def grid_coords(pipeline) -> tuple[float | None, int | None]:
    """(ratio of the pipeline's pruner, bits of its quantizer) — None where it has none (or several)."""
    ratios = [s.ratio for s in pipeline if getattr(s, "kind", None) == "prune"]
    bits = [s.bits for s in pipeline if getattr(s, "kind", None) == "quantize"]
    return (ratios[0] if len(ratios) == 1 else None, bits[0] if len(bits) == 1 else None)


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
    """A unit of work in a sweep: what to compute, identified by the key its record will have.

    ``point`` holds only what neither the pipeline nor the provenance says: ``name`` (the label of an explicit
    pipeline of a config) and ``settings`` (method settings overridden for this task). A grid point's ratio, bits
    and order are read from the pipeline (:func:`grid_role`, :func:`grid_coords`), never stored twice."""

    provenance: Provenance
    pipeline: tuple[Spec, ...]
    point: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return record_key(self.provenance, tuple(self.pipeline), self.point)


@dataclass(frozen=True)
class Record:
    """A measured figure: ``value`` of ``provenance.metric`` (higher is better) after ``pipeline``.

    A record whose measurement failed (``failed`` is a reason) is kept and shown, and excluded from every
    analysis. A non-finite ``value`` (an infinite perplexity, a NaN) is such a failure: it is stored as it is,
    never replaced by a finite number.
    """

    provenance: Provenance
    pipeline: tuple[Spec, ...]
    value: float
    point: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)
    failed: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipeline", tuple(self.pipeline))
        if not isinstance(self.value, (int, float, np.floating, np.integer)) or isinstance(self.value, bool):
            raise bad("value", self.value, "a record's value must be a number")
        object.__setattr__(self, "value", float(self.value))
        if self.failed is not None and (not isinstance(self.failed, str) or not self.failed):
            raise bad("failed", self.failed, "must be None or the reason the measurement failed")
        if self.failed is None and not math.isfinite(self.value):
            object.__setattr__(self, "failed", f"non-finite {self.provenance.metric} ({self.value})")

    @property
    def key(self) -> str:
        return record_key(self.provenance, self.pipeline, self.point)

    @property
    def order(self) -> str:
        return pipeline_label(self.pipeline)

    @property
    def protocol(self) -> str:
        return self.provenance.protocol

    @property
    def role(self) -> str:
        """What the record is in a pruning x quantization grid, read from its pipeline alone (the one place the
        order lives): :func:`grid_role`; "named" for an explicit pipeline (``point["name"]``)."""
        return "named" if self.point.get("name") else grid_role(self.pipeline)

    @property
    def coords(self) -> tuple[float | None, int | None]:
        """(pruning ratio, bit width) of a grid record, from its pipeline (None where it has no such method)."""
        return grid_coords(self.pipeline)

    @property
    def ok(self) -> bool:
        """False for a failed measurement (excluded from every analysis)."""
        return self.failed is None

    def to_dict(self) -> dict[str, Any]:
        return self._to_dict(self.key)

    def _to_dict(self, key: str) -> dict[str, Any]:
        """:meth:`to_dict` with the key its caller has just computed (``key`` must be ``self.key``)."""
        d = {
            "key": key,
            "provenance": self.provenance.to_dict(),
            "pipeline": [s.to_dict() for s in self.pipeline],
            "order": self.order,
            "value": self.value,
            "point": self.point,
            "extras": self.extras,
            "arrays": sorted(self.arrays) if self.arrays else [],
        }
        if self.failed is not None:
            d["failed"] = self.failed
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        value, failed, extras = d["value"], d.get("failed"), d.get("extras", {})
        if (failed is None and isinstance(extras, dict) and extras.get("overflow") is True and value == -1e300):
            # written by an older pih, which stored a non-finite metric as -1e300: it was never a number
            value, failed = math.nan, "non-finite metric (stored as -1e300 with extras.overflow by an older pih)"
        return cls(
            provenance=Provenance.from_dict(d["provenance"]),
            pipeline=tuple(spec_from_dict(s) for s in d["pipeline"]),
            value=value,
            point=d.get("point", {}),
            extras=extras,
            failed=failed,
        )


def split_failed(records: Iterable[Record]) -> tuple[list[Record], list[dict[str, Any]]]:
    """(records that measured something, one line per failed record: key, order, seed, point, reason)."""
    ok, failed = [], []
    for r in records:
        if r.ok:
            ok.append(r)
        else:
            failed.append({"key": r.key, "order": r.order, "seed": r.provenance.seed, "point": r.point,
                           "reason": r.failed})
    return ok, failed


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


_KEY_PATTERN = re.compile(r"[0-9a-f]{20}\Z")
_REQUIRED_FIELDS = ("key", "provenance", "pipeline", "value")
TORN_FILE = "records.torn"


def _sealed(body: dict[str, Any]) -> bytes:
    """The stored line of ``body``: canonical JSON with a ``check`` field (a digest of everything else)."""
    norm = json.loads(_canonical(body))  # the form a reader gets back (tuples as lists, string keys, ...)
    norm.pop("check", None)
    norm["check"] = _line_check(norm)
    return _canonical(norm).encode() + b"\n"


def _line_check(d: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in d.items() if k != "check"}).encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    va, vb = a.get("value"), b.get("value")
    same = va == vb or (isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb))
    return bool(same) and a.get("failed") == b.get("failed")


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM back while a record is being written (delivered right after), main thread only."""
    import signal

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write_all(fh, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fh.write(view)
        view = view[n:]


@dataclass
class _Entry:
    line: int
    data: dict[str, Any]


class Store:
    """Append-only results store: ``records.jsonl`` plus ``arrays/<key>.npz`` sidecars in one folder.

    Guarantees (see the README, "What the store guarantees"):

    - a record is on disk (fsync'ed) when ``append`` returns; a key is written at most once, also by concurrent
      processes (the check and the write happen under one file lock, after re-reading what others appended);
    - each line carries a checksum of its content: a changed line is reported with its line number, never read
      as a valid record; a corrupt line, a JSON line that is not a record, a value that is not a number are
      errors naming the line;
    - an incomplete last line (a crash mid-write) is ignored when reading and moved to ``records.torn`` by the
      next append; a complete last record without its newline is kept (the next append adds the newline);
    - two lines with one key (written by an older version): the same value is reported and the first line
      used; different values are refused with both line numbers, by every reader;
    - sidecar arrays are written to a temporary file, fsync'ed and renamed under the lock before their record's
      line, and verified on read (their SHA-256 is in the line): a missing or corrupt sidecar is an error naming
      the file and the line, never an empty result;
    - a failed write (no space left, a read-only store) leaves the store as it was and says so in one line.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise bad("path", str(path), "a results store is a folder, and this is a file")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._os_error("create the store folder", exc) from None
        self.file = self.path / "records.jsonl"
        self._mutex = threading.RLock()  # the in-memory index, for threads sharing this object
        self._reset()
        self._warned: set[str] = set()

    @classmethod
    def existing(cls, path: str | os.PathLike, name: str = "store") -> Store:
        """Open a store that must already hold records (for commands that only read)."""
        if not (Path(path) / "records.jsonl").is_file():
            raise bad(name, str(path), "no records.jsonl there")
        return cls(path)

    # -- reading -------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._order: list[_Entry] = []
        self._dups: dict[int, tuple[str, int]] = {}  # line of a duplicate -> (key, line of the copy used)
        self._end = 0  # bytes of complete lines indexed
        self._line = 1  # number of the line starting at _end
        self._tail: tuple[str, int, int] | None = None  # ("torn" | "open", bytes, line) after _end
        self._ino: int | None = None

    def _warn(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            warnings.warn(msg, PihWarning, stacklevel=4)

    def _where(self) -> str:
        return f"store={str(self.file)!r}"

    def _problem(self, d: Any) -> str | None:
        if not isinstance(d, dict):
            return f"is not a record (a JSON {type(d).__name__})"
        missing = [k for k in _REQUIRED_FIELDS if k not in d]
        if missing:
            return f"is not a record (no {', '.join(missing)})"
        if not isinstance(d["key"], str) or not _KEY_PATTERN.match(d["key"]):
            return f"is not a record (key={d['key']!r} is not a record key)"
        v = d["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"holds value={v!r}: a record's value must be a number"
        if "check" in d and d["check"] != _line_check(d):
            return "was changed after it was written (its checksum does not match): restore it or delete the line"
        try:
            Record.from_dict(d)
        except (PihError, TypeError, KeyError, ValueError, AttributeError) as exc:
            return f"is not a valid record: {exc}"
        return None

    def _decode(self, raw: bytes, line: int, last: bool = False) -> dict | None:
        try:
            d = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            if last:
                return None  # the torn tail of an interrupted append
            why = getattr(exc, "msg", None) or type(exc).__name__
            raise StoreError(f"{self._where()}: corrupt record on line {line} (not valid JSON: {why}); restore the "
                             "line or delete it") from None
        problem = self._problem(d)
        if problem:
            raise StoreError(f"{self._where()}: line {line} {problem}")
        return d

    def _add(self, line: int, d: dict) -> None:
        key = d["key"]
        e = self._entries.get(key)
        if e is None:
            e = _Entry(line, d)
            self._entries[key] = e
            self._order.append(e)
            return
        if e.line == line or line in self._dups:
            return
        if not _same_result(e.data, d):
            raise StoreError(
                f"{self._where()}: key {key} is stored twice with different values (line {e.line}: "
                f"{e.data['value']!r}{' failed' if e.data.get('failed') else ''}, line {line}: {d['value']!r}"
                f"{' failed' if d.get('failed') else ''}); delete the wrong line")
        self._dups[line] = (key, e.line)
        self._warn(f"{self._where()}: key {key} is stored twice with the same value (lines {e.line} and {line}, "
                   f"written by an older pih): line {e.line} is used")

    def _refresh(self) -> None:
        """Index what was appended since the last read (everything, the first time or after a rewrite)."""
        with self._mutex:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            if self._ino is not None:
                self._reset()
            return
        except OSError as exc:
            raise self._os_error("read records.jsonl", exc) from None
        if self._ino is not None and (st.st_ino != self._ino or st.st_size < self._end):
            self._reset()
        self._ino = st.st_ino
        if st.st_size == self._end:
            return
        try:
            with open(self.file, "rb") as fh:
                fh.seek(self._end)
                data = fh.read()
        except OSError as exc:
            raise self._os_error("read records.jsonl", exc) from None
        pos, line, tail = 0, self._line, None
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                raw = data[pos:]
                d = self._decode(raw, line, last=True) if raw.strip() else None
                if d is None:
                    tail = ("torn", len(raw), line)
                    if raw.strip():
                        self._warn(f"{self._where()}: line {line} is incomplete ({len(raw)} bytes, an interrupted "
                                   f"write): ignored; the next append moves it to {TORN_FILE}")
                else:
                    self._add(line, d)
                    tail = ("open", len(raw), line)
                break
            raw = data[pos:nl]
            if raw.strip():
                self._add(line, self._decode(raw, line))
            pos, line = nl + 1, line + 1
        self._end += pos
        self._line, self._tail = line, tail

    def raw(self) -> list[dict]:
        """The stored lines as dicts, one per key (the first line of a duplicated key), in file order."""
        self._refresh()
        return [dict(e.data) for e in self._order]

    def records(self) -> list[Record]:
        return [Record.from_dict(d) for d in self.raw()]

    def keys(self) -> set[str]:
        self._refresh()
        return set(self._entries)

    def has(self, key: str) -> bool:
        self._refresh()
        return key in self._entries

    def __len__(self) -> int:
        return len(self.keys())

    def line_of(self, key: str) -> int:
        """The line number of ``key``'s record (the first one, for a duplicated key)."""
        self._refresh()
        if key not in self._entries:
            raise bad("key", key, f"not in store {str(self.path)!r}")
        return self._entries[key].line

    @property
    def duplicates(self) -> list[dict]:
        """Lines that repeat a stored key with the same value (written by older versions): reported, not used."""
        self._refresh()
        return [{"key": k, "line": ln, "same_as_line": first} for ln, (k, first) in sorted(self._dups.items())]

    def get(self, key: str) -> Record:
        self._refresh()
        if key not in self._entries:
            raise bad("key", key, f"not in store {str(self.path)!r}")
        return Record.from_dict(self._entries[key].data)

    def load_arrays(self, record: Record | str) -> dict[str, np.ndarray]:
        """The sidecar arrays of a stored record ({} when it has none), verified against its line."""
        import zipfile
        import zlib

        key = record if isinstance(record, str) else record.key
        self._refresh()
        e = self._entries.get(key)
        if e is None:
            raise bad("key", key, f"not in store {str(self.path)!r}")
        names = sorted(e.data.get("arrays") or [])
        if not names:
            return {}
        f = self.path / "arrays" / f"{key}.npz"
        what = f"record {key} (line {e.line}, {e.data.get('order')})"
        fix = f"restore the file, or delete line {e.line} of records.jsonl to recompute the point"
        if not f.is_file():
            raise StoreError(f"store={str(self.path)!r}: {what} has arrays {names} but arrays/{key}.npz is missing; "
                             f"{fix}")
        sha = e.data.get("arrays_sha256")
        if sha is not None and _file_sha256(f) != sha:
            raise StoreError(f"store={str(self.path)!r}: arrays/{key}.npz of {what} is corrupt or was replaced "
                             f"(its SHA-256 differs from the one stored with the record); {fix}")
        try:
            with np.load(f, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise StoreError(f"store={str(self.path)!r}: arrays/{key}.npz of {what} is corrupt "
                             f"({type(exc).__name__}: {exc}); {fix}") from None
        if sorted(out) != names:
            raise StoreError(f"store={str(self.path)!r}: arrays/{key}.npz of {what} holds {sorted(out)}, the record "
                             f"lists {names}; {fix}")
        return out

    def verify(self) -> list[str]:
        """Every problem of the store in one line each (an empty list: the store is sound): lines are checked
        on reading; this also checks every sidecar and lists leftover temporary files."""
        problems = []
        try:
            self._refresh()
        except StoreError as exc:
            return [str(exc)]
        for e in self._order:
            try:
                self.load_arrays(e.data["key"])
            except StoreError as exc:
                problems.append(str(exc))
        for ln, (k, first) in sorted(self._dups.items()):
            problems.append(f"{self._where()}: line {ln} repeats key {k} of line {first} (same value)")
        if self._tail is not None and self._tail[0] == "torn":
            problems.append(f"{self._where()}: line {self._tail[2]} is incomplete (an interrupted write)")
        adir = self.path / "arrays"
        if adir.is_dir():
            problems += [f"store={str(self.path)!r}: leftover temporary file arrays/{t.name} (an interrupted write; "
                         "removed by the next append once its process has ended)"
                         for t in sorted(adir.glob(".*.tmp.npz"))]
        return problems

    # -- writing -------------------------------------------------------------------------------------------
    def _os_error(self, what: str, exc: OSError) -> StoreError:
        import errno

        where = f"store={str(self.path)!r}"
        if exc.errno == errno.ENOSPC:
            return StoreError(f"{where}: no space left on the device to {what}; the store is unchanged (free some "
                              "space and rerun to resume)")
        if exc.errno == errno.EDQUOT:
            return StoreError(f"{where}: disk quota exceeded to {what}; the store is unchanged")
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(f"{where}: cannot {what}: the store is read-only ({exc.strerror})")
        return StoreError(f"{where}: cannot {what}: {exc.strerror or exc}")

    @contextlib.contextmanager
    def _locked(self):
        try:
            fh = open(self.file, "a+b", buffering=0)
        except OSError as exc:
            raise self._os_error("open records.jsonl for writing", exc) from None
        with fh, _signals_deferred():
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _repair_tail(self, fh) -> None:
        """Under the lock: end a complete last record with its newline; move an incomplete one to records.torn."""
        if self._tail is None:
            return
        kind, nbytes, line = self._tail
        if kind == "open":
            _write_all(fh, b"\n")
            os.fsync(fh.fileno())
            self._end += nbytes + 1
            self._line += 1
        else:
            fh.seek(self._end)
            torn = fh.read()
            if torn.strip():
                with open(self.path / TORN_FILE, "ab") as t:
                    t.write(torn.rstrip(b"\n") + b"\n")
                    t.flush()
                    os.fsync(t.fileno())
                self._warn(f"{self._where()}: moved the incomplete line {line} ({nbytes} bytes, an interrupted "
                           f"write) to {TORN_FILE}")
            fh.truncate(self._end)
            os.fsync(fh.fileno())
        self._tail = None
        self._ino = os.fstat(fh.fileno()).st_ino

    def _sidecar_tmp(self, key: str, arrays: dict[str, Any]) -> tuple[Path, str]:
        """Write ``arrays`` to a temporary sidecar (fsync'ed) and return its path and SHA-256. An uncompressed
        npz (a record's per-row floats do not compress: 9.4 against 10.2 kB, at 1.6x the time), built in memory
        so that it is written in one call and hashed without being read back."""
        import io
        import uuid

        adir = self.path / "arrays"
        tmp = adir / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npz"
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        data = buf.getbuffer()
        try:
            adir.mkdir(exist_ok=True)
            with open(tmp, "wb", buffering=0) as fh:
                _write_all(fh, data)
                os.fsync(fh.fileno())
            return tmp, hashlib.sha256(data).hexdigest()
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self._os_error(f"write arrays/{key}.npz", exc) from None
            raise

    def _clean_stale_tmp(self) -> None:
        """Remove temporary sidecars left by processes that are gone (killed mid-write)."""
        adir = self.path / "arrays"
        if not adir.is_dir():
            return
        for t in adir.glob(".*.tmp.npz"):
            parts = t.name.split(".")
            pid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            if pid is None or pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                t.unlink(missing_ok=True)
            except OSError:
                pass

    def append(self, record: Record, exist_ok: bool = False) -> str:
        """Write ``record`` durably and return its key; refuse a second record with the same key (with
        ``exist_ok``, leave the stored one as it is). Safe with concurrent writers (processes or threads)."""
        return self.extend([record], exist_ok=exist_ok)[0]

    def extend(self, records: Iterable[Record], exist_ok: bool = False) -> list[str]:
        """Write ``records`` durably under one lock and return their keys, in order: one check-and-append of
        the whole batch (each key checked against the store and the batch's earlier records), one write of the
        lines and one flush to disk, where :meth:`append` per record pays a lock and two flushes each. A key
        already stored (or earlier in the batch) is refused before anything is written, or, with ``exist_ok``,
        skipped. Safe with concurrent writers; a write killed midway leaves whole lines and at most one torn
        line, which readers ignore and the next append moves aside."""
        records = list(records)
        return self._extend(records, [r.key for r in records], exist_ok)

    def _extend(self, records: list[Record], keys: list[str], exist_ok: bool) -> list[str]:
        """:meth:`extend` with the records' keys already computed (``keys[i]`` is ``records[i].key``)."""
        if not records:
            return keys
        tmps: dict[int, Path] = {}
        try:
            lines = []
            for i, (key, rec) in enumerate(zip(keys, records, strict=True)):
                body = {**rec._to_dict(key), "created": time.time()}
                if rec.arrays:
                    tmps[i], body["arrays_sha256"] = self._sidecar_tmp(key, rec.arrays)
                lines.append(_sealed(body))
            with self._mutex, self._locked() as fh:
                self._refresh()
                new, seen = [], set()
                for i, key in enumerate(keys):
                    if key in self._entries or key in seen:
                        if exist_ok:
                            continue
                        where = (f"line {self._entries[key].line}" if key in self._entries
                                 else "twice in one batch")
                        raise bad("record", key, f"already stored ({where}; the store is append-only and resume "
                                  "skips stored keys)")
                    seen.add(key)
                    new.append(i)
                if not new:
                    return keys
                try:
                    self._clean_stale_tmp()
                    self._repair_tail(fh)
                    moved = [i for i in new if i in tmps]
                    for i in moved:
                        os.replace(tmps.pop(i), self.path / "arrays" / f"{keys[i]}.npz")
                    if moved:
                        dfd = os.open(self.path / "arrays", os.O_RDONLY)
                        try:
                            os.fsync(dfd)
                        finally:
                            os.close(dfd)
                except OSError as exc:
                    raise self._os_error(f"write the record {keys[new[0]]}", exc) from None
                start = os.fstat(fh.fileno()).st_size
                try:
                    _write_all(fh, b"".join(lines[i] for i in new))
                    os.fsync(fh.fileno())
                except OSError as exc:
                    with contextlib.suppress(OSError):  # leave no partial line behind
                        fh.truncate(start)
                        os.fsync(fh.fileno())
                    raise self._os_error(f"write the record {keys[new[0]]}", exc) from None
                if start == self._end:
                    for i in new:
                        self._add(self._line, json.loads(lines[i]))
                        self._end, self._line = self._end + len(lines[i]), self._line + 1
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
        return keys


def run_sweep(store: Store, tasks: Iterable[Task], compute: Callable[[Task], Record] | None = None,
              progress: bool = True, desc: str = "sweep", compute_group: Callable | None = None,
              group_by: Callable[[Task], Any] | None = None, executor=None) -> list[Record]:
    """Compute each task whose key is not stored yet, storing each record as soon as it is finished.

    Returns the records of all tasks, in task order (stored ones read back, new ones as computed). A killed sweep
    rerun with the same tasks recomputes only what was not stored. Several processes may run the same sweep on
    one store: a task stored by another process meanwhile is not computed again, and a key is never stored
    twice (the first stored record is the one every reader uses).

    ``compute(task) -> Record`` computes one task. A backend that computes several tasks at once (the
    simulation's one compiled call per seed) gives ``compute_group(tasks) -> list[Record]`` (one record per task,
    in order) and ``group_by(task)`` (tasks with equal values form a group, e.g. the seed); a group is computed
    when any of its tasks is missing, and only the missing ones are stored. Either way ``compute`` must be a pure
    function of its task: what it returns depends on nothing computed for another task.

    ``executor`` (:mod:`pih.executors`; default: the one :func:`pih.executors.using` set, else none): the groups
    run on its workers (with ``compute``, ``group_by`` is optional: tasks with equal values go to one worker, e.g.
    those sharing a compressed prefix; only missing tasks are sent). This process stays the only writer of the
    store: each group's records are appended as the group comes back, a key already stored (by this sweep or
    another process) is never written again. A task whose computation raises is stored as a failed record
    (:func:`pih.executors.failed_record`); a group whose worker was lost is left unstored, the others finish, and
    a :class:`PihError` then says how many points a rerun will compute.
    """
    if (compute is None) == (compute_group is None):
        raise bad("compute", compute, "give compute (one task) or compute_group with group_by (several)")
    if compute_group is not None and group_by is None:
        raise bad("group_by", None, "compute_group needs group_by (which tasks are computed together)")
    if executor is None:
        from .executors import current

        executor = current()
    tasks = list(tasks)
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise bad("tasks", f"{len(keys)} tasks", "two tasks have the same key (same protocol, seed, pipeline, point)")
    wanted = set(keys)
    key_of = {id(t): k for t, k in zip(tasks, keys, strict=True)}  # each key computed once (canonical JSON)
    stored = {d["key"]: d for d in store.raw() if d["key"] in wanted}
    out: dict[str, Record] = {k: Record.from_dict(d) for k, d in stored.items()}
    if executor is not None:
        return _sweep_on(executor, store, tasks, keys, key_of, stored, out, compute, compute_group, group_by,
                         progress, desc)

    if compute_group is None:
        todo = [(t, k) for t, k in zip(tasks, keys, strict=True) if k not in stored]
        for task, key in tqdm(todo, desc=desc, disable=not progress, file=sys.stderr, initial=0):
            if store.has(key):  # stored by another process since this sweep started
                out[key] = store.get(key)
                continue
            _keep(store, [(key, compute(task))], stored, out)
        return [out[k] for k in keys]
    groups: dict[Any, list[Task]] = {}
    for t in tasks:
        groups.setdefault(group_by(t), []).append(t)
    pending = [g for g in groups.values() if any(key_of[id(t)] not in stored for t in g)]
    for group in tqdm(pending, desc=desc, disable=not progress, file=sys.stderr, initial=0):
        if all(store.has(key_of[id(t)]) for t in group):
            for t in group:
                out[key_of[id(t)]] = store.get(key_of[id(t)])
            continue
        recs = list(compute_group(group))
        if len(recs) != len(group):
            raise bad("compute_group", f"{len(recs)} records", f"expected one per task ({len(group)})")
        _keep(store, [(key_of[id(t)], rec) for t, rec in zip(group, recs, strict=True)], stored, out)
    return [out[k] for k in keys]


def _keep(store: Store, done: list[tuple[str, Record]], stored: dict, out: dict[str, Record]) -> int:
    """Store the computed records of one group in one batch (:meth:`Store.extend`) and put each task's record
    in ``out``: the stored one where another process stored the key first with another result. ``done``: (a task's
    key, its computed record). Returns how many records were new."""
    new = []
    for key, rec in done:
        if not isinstance(rec, Record):
            raise bad("compute", type(rec).__name__, "must return a Record")
        if rec.key != key:
            raise bad("compute", rec.key, f"returned a record for another task (expected key {key})")
        if key in stored or store.has(key):  # stored before, or by another process meanwhile
            if key not in out:
                out[key] = store.get(key)
            continue
        new.append((key, rec))
    store._extend([rec for _, rec in new], [key for key, _ in new], exist_ok=True)
    for key, rec in new:
        kept = store.get(key)
        out[key] = rec if _same_result({"value": rec.value, "failed": rec.failed},
                                       {"value": kept.value, "failed": kept.failed}) else kept
    return len(new)


def _sweep_on(executor, store: Store, tasks: list[Task], keys: list[str], key_of: dict[int, str], stored: dict,
              out: dict[str, Record], compute, compute_group, group_by, progress: bool, desc: str) -> list[Record]:
    """:func:`run_sweep` on an executor's workers; this process appends every record (the only writer)."""
    from .executors import GroupWork, Lost, groups_of

    if compute_group is not None:  # a group is computed whole when any of its tasks is missing
        work = [g for g in groups_of(tasks, group_by) if any(key_of[id(t)] not in stored for t in g)]
    else:  # only the missing tasks, grouped (e.g. by shared prefix)
        work = groups_of([t for t in tasks if key_of[id(t)] not in stored], group_by)
    work.sort(key=len, reverse=True)  # the largest groups first: the small ones fill the workers' gaps at the end
    fn = GroupWork(compute=compute, compute_group=compute_group)
    lost: list[tuple[list[Task], str]] = []
    bar = tqdm(total=sum(len(g) for g in work), desc=desc, disable=not progress, file=sys.stderr)
    try:
        for i, res in executor.map(fn, work):
            group = work[i]
            if isinstance(res, Lost):
                lost.append((group, res.reason))
                bar.update(len(group))
                continue
            recs = res["records"]
            if len(recs) != len(group):
                raise bad("compute_group", f"{len(recs)} records", f"expected one per task ({len(group)})")
            n_new = _keep(store, [(key_of[id(t)], rec) for t, rec in zip(group, recs, strict=True)], stored, out)
            executor.log.append({"tasks": len(group), "stored": n_new, "pid": res.get("pid"),
                                 "host": res.get("host"), "started": res.get("started"),
                                 "seconds": round(res.get("seconds", 0.0), 3),
                                 "info": res.get("info") or {}, "threads": res.get("threads") or {}})
            bar.update(len(group))
    finally:
        bar.close()
    if lost:
        n = sum(len(g) for g, _ in lost)
        raise PihError(f"{n} of {len(tasks)} points were not computed ({lost[0][1]}); every other point is stored "
                       f"in {str(store.path)!r}: rerun the same command to compute the missing ones")
    return [out[k] for k in keys]
