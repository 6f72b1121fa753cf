"""Where a sweep's work runs: in this process (``serial``) or on the workers of a Ray cluster (``ray``).

An executor runs a function over a list of work items (groups of tasks) and yields each outcome as it finishes.
The sweep's driver (:func:`pih.records.run_sweep`) is the only writer of the store: workers return records, the
driver appends them (under the store's lock, skipping keys already stored), so a point is never stored twice,
whatever a worker does. A worker killed mid-task is retried by Ray (``max_retries``); a task whose computation
raises is a failed record (:func:`failed_record`), stored and shown, and never stalls the grid; a group whose
worker died more often than ``max_retries`` is left unstored and reported (a rerun computes it).

Ray is optional (``pip install pih[ray]``); ``import pih`` never imports it.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import Interrupted, PihError, StoreError, bad

EXECUTORS = ("serial", "ray")
RAY_INSTALL = "pip install pih[ray]"
#: environment variables a local Ray instance's workers get from the driver (cache folders, offline settings,
#: the kernels' switches, glibc's huge-page tunable of :mod:`pih.hugepages`): every ``PIH_*`` and these
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "XLA_FLAGS",
                 "JAX_PLATFORMS", "GLIBC_TUNABLES")


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


class EnvironmentMismatch(PihError):
    """A worker cannot compute the task as the driver defined it (another model, other data on that node): not a
    property of the point, so it is never stored as a failed record."""


#: exceptions that say nothing about the point itself (a rerun may well succeed): never stored as failures
def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, Interrupted, StoreError, EnvironmentMismatch)) or \
        type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError, without importing torch


def failed_record(task, exc: BaseException):
    """The record of a task whose computation raised ``exc``: value NaN, ``failed`` = the error in one line."""
    from .records import Record

    msg = " ".join(str(exc).split())
    reason = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return Record(task.provenance, tuple(task.pipeline), math.nan, dict(task.point), {"error": type(exc).__name__},
                  failed=reason)


@dataclass(frozen=True)
class Guarded:
    """``compute(task)`` with a deterministic error turned into a failed record (MemoryError, an out-of-memory
    GPU, an interrupt or a store error still raise: they say nothing about the point)."""

    compute: Callable

    def __call__(self, task):
        try:
            return self.compute(task)
        except Exception as exc:  # noqa: BLE001 - stored as the point's failure, with its error
            if _transient(exc):
                raise
            return failed_record(task, exc)


@dataclass(frozen=True)
class GroupWork:
    """What a worker runs for one group of tasks: ``compute`` on each task (each guarded), or ``compute_group`` on
    the whole group (an error fails every task of the group). Returns the records and where they were computed;
    ``compute.work_info()``, when the compute object has it, adds what the worker's state did for the group."""

    compute: Callable | None = None
    compute_group: Callable | None = None

    # Prefixes shared between workers: a compute object may say which snapshots a group makes whole that others
    # can take (``offers(tasks)``), which it could take (``wants(tasks)``), hand its snapshots over after a group
    # (``offer(keys)``) and look up a prefix before computing it (``use_source(fetch)``: ``fetch(key)`` is the
    # snapshot or None). An executor that cannot share (serial: one process holds everything) never calls them.
    def offers(self, tasks: list) -> list:
        return list(self.compute.offers(tasks)) if hasattr(self.compute, "offers") else []

    def wants(self, tasks: list) -> list:
        return list(self.compute.wants(tasks)) if hasattr(self.compute, "wants") else []

    def offer(self, keys: list) -> dict:
        return self.compute.offer(keys) if keys and hasattr(self.compute, "offer") else {}

    def __call__(self, tasks: list, source: Callable | None = None) -> dict[str, Any]:
        t0 = time.time()
        if source is not None and hasattr(self.compute, "use_source"):
            self.compute.use_source(source)
        try:
            return self._run(tasks, t0)
        finally:
            if source is not None and hasattr(self.compute, "use_source"):
                self.compute.use_source(None)

    def _run(self, tasks: list, t0: float) -> dict[str, Any]:
        if self.compute_group is not None:
            try:
                recs = list(self.compute_group(tasks))
            except Exception as exc:  # noqa: BLE001 - every task of the group failed with it
                if _transient(exc):
                    raise
                recs = [failed_record(t, exc) for t in tasks]
            fn = self.compute_group
        else:
            g = Guarded(self.compute)
            recs = [g(t) for t in tasks]
            fn = self.compute
        info = fn.work_info() if hasattr(fn, "work_info") else {}
        return {"records": recs, "pid": os.getpid(), "host": platform.node(), "started": t0,
                "seconds": time.time() - t0, "info": info, "threads": thread_facts()}


def thread_facts() -> dict[str, Any]:
    """The thread pools of this process, for the executor's log: torch's intra-op threads (when torch is loaded)
    and XLA's CPU pool (when the simulation is loaded; None: XLA's default, one thread per CPU)."""
    out: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        out["torch"] = torch.get_num_threads()
    settings = getattr(sys.modules.get("sim"), "JAX_SETTINGS", None)
    if settings is not None:
        out["xla"] = settings["xla_threads"]["after"]
    return out


@dataclass
class Lost:
    """A work item that did not come back: its worker died more often than the retries allow, or it raised an
    error that says nothing about its points (out of memory, another model on the worker's node)."""

    reason: str


@dataclass
class Executor:
    """Runs ``fn`` over work items; :meth:`map` yields ``(index, outcome)`` in the order they finish, ``outcome``
    being ``fn(item)`` or :class:`Lost`. ``log``: one entry per finished item (where and how long)."""

    name: str = "serial"
    log: list[dict] = field(default_factory=list)

    def map(self, fn: Callable, items: list) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    @property
    def workers(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers}

    def close(self) -> None:
        pass

    def warm(self, fn: Callable, item: Any = None) -> None:
        """Start the workers now, each running ``fn(item)`` (imports, a model load) while the driver prepares the
        tasks; nothing waits for it, and an error there is the real tasks' to report. Serial: nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SerialExecutor(Executor):
    """Every item in this process, one after the other."""

    def map(self, fn: Callable, items: list) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            yield i, fn(item)


def _in_worker(fn, item):
    return fn(item)


WAIT_FOR_OWNER = 0.05  # seconds a worker waits for an offered prefix to be ready before computing it itself


class _Shared:
    """In a worker: the prefixes other tasks offered (``{key: ref}``, each ref the ``{key: snapshot}`` a finished
    task handed over). A prefix is taken only when its task has finished (``ray.wait``, without waiting for the
    task); one not ready yet, or lost with its worker, is computed here as it would be without sharing."""

    def __init__(self, refs: dict, wait: float = WAIT_FOR_OWNER):
        self.refs, self.got, self.wait = refs, {}, wait

    def __call__(self, key):
        import ray
        from ray.exceptions import RayError

        ref = self.refs.get(key)
        if ref is None:
            return None
        if ref not in self.got:
            try:
                # its task finished, on any node: a borrowed ref's state comes from its owner (the driver), which a
                # wait of 0 s does not ask (measured: never ready), 10 ms does
                ready, _ = ray.wait([ref], timeout=self.wait, fetch_local=False)
                if not ready:
                    return None
                self.got[ref] = ray.get(ref)
            except RayError:
                self.got[ref] = {}
        return self.got[ref].get(key)


def _in_worker_sharing(fn, item, wanted: dict, offered: list, wait: float = WAIT_FOR_OWNER):
    """``fn(item)`` with the prefixes in ``wanted`` to take from other tasks; returns its outcome and, for the
    keys in ``offered``, this worker's snapshots (the task's second return value, which other tasks take)."""
    out = fn(item, source=_Shared(wanted, wait)) if wanted else fn(item)
    return (out, fn.offer(offered)) if offered else out


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """``values`` in os.environ inside the block (what a process started there inherits), as before after it."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class RayExecutor(Executor):
    """Each item as a Ray task on the cluster at ``address`` (None: a local instance of ``num_cpus`` CPUs, started
    here and shut down by :meth:`close`; "auto": the cluster this node belongs to; "HOST:PORT"). Each task asks
    for ``cpus_per_task`` CPUs and ``gpus_per_task`` GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` for it; a fraction
    lets tasks share a GPU) and is retried ``max_retries`` times when its worker dies.

    The workers' environment (``PIH_*``, the offline and thread variables): a local instance started here has its
    workers inherit it from this process (with ``PIH_XLA_THREADS`` set for them); a cluster or an instance started
    elsewhere gets it as a Ray runtime environment, which costs every new worker about 1.3 s before its first task
    (measured on 2 cores; a local instance's workers start their first task 0.25 s after it is sent)."""

    name: str = "ray"
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 3
    prefix_wait: float = WAIT_FOR_OWNER  # how long a worker waits for an offered prefix (else computes it)
    _owns: bool = False
    _started: bool = False
    _inherited: bool = False  # the workers inherit this process's environment (a local instance started here)

    def start(self) -> RayExecutor:
        if self._started:
            return self
        if not ray_installed():
            raise PihError(f"--executor ray needs Ray: {RAY_INSTALL}")
        import ray

        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            # a local instance: the raylet started now, and the workers it starts, inherit os.environ (RAY_ADDRESS
            # makes ray.init join a running cluster instead)
            local = self.address is None and not os.environ.get("RAY_ADDRESS")
            if not local:
                kw["runtime_env"] = {"env_vars": {k: v for k, v in os.environ.items()
                                                  if k.startswith("PIH_") or k in FORWARDED_ENV}}
            if self.address is None:
                kw["num_cpus"] = self.num_cpus or os.cpu_count() or 1
            elif self.address != "auto":  # Ray itself retries an unreachable address for minutes
                problem = _unreachable(self.address)
                if problem:
                    raise bad("--address", self.address, f"no Ray cluster answers there ({problem}); start one with "
                              "`ray start --head` and give the address it prints")
            try:
                with _environ({"PIH_XLA_THREADS": self._xla_threads} if local else {}):
                    ray.init(address=self.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local instance"
                raise PihError(f"--address {where}: cannot start or reach the Ray cluster "
                               f"({' '.join(str(exc).split())[:300]})") from None
            self._owns = True
            self._inherited = local
        res = ray.cluster_resources()
        if self.gpus_per_task and res.get("GPU", 0) < self.gpus_per_task:
            self.close()
            raise bad("--gpus-per-task", self.gpus_per_task, f"the Ray cluster has {res.get('GPU', 0):g} GPUs")
        if res.get("CPU", 0) < self.cpus_per_task:
            self.close()
            raise bad("--cpus-per-task", self.cpus_per_task, f"the Ray cluster has {res.get('CPU', 0):g} CPUs")
        self._started = True
        return self

    @property
    def workers(self) -> int:
        """How many tasks the cluster can run at once with these per-task resources."""
        if not self._started:
            return 0
        import ray

        res = ray.cluster_resources()
        n = res.get("CPU", 0) / self.cpus_per_task if self.cpus_per_task else math.inf
        if self.gpus_per_task:
            n = min(n, res.get("GPU", 0) / self.gpus_per_task)
        return max(1, int(n))

    def describe(self) -> dict[str, Any]:
        return {"executor": "ray", "address": self.address or "local", "workers": self.workers,
                "cpus_per_task": self.cpus_per_task, "gpus_per_task": self.gpus_per_task,
                "max_retries": self.max_retries}

    def _remote(self, func=_in_worker, num_returns: int = 1):
        import ray

        env = {} if self._inherited else {"runtime_env": {"env_vars": {"PIH_XLA_THREADS": self._xla_threads}}}
        return ray.remote(func).options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task,
                                              max_retries=self.max_retries, retry_exceptions=False,
                                              num_returns=num_returns, **env)

    @property
    def _xla_threads(self) -> str:
        """XLA's CPU pool in a worker (``PIH_XLA_THREADS``, read when the worker imports the simulation): this
        process's setting, else the task's CPUs. XLA's own default, one thread per CPU of the node in every worker,
        oversubscribes the node's cores."""
        return os.environ.get("PIH_XLA_THREADS") or str(max(1, math.ceil(self.cpus_per_task)))

    def warm(self, fn: Callable, item: Any = None) -> None:
        self.start()
        remote = self._remote()
        self._warming = [remote.remote(fn, item) for _ in range(self.workers)]

    def map(self, fn: Callable, items: list) -> Iterator[tuple[int, Any]]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        self.start()
        fref = ray.put(fn)
        pending = self._submit_sharing(fn, fref, items) if hasattr(fn, "offers") and len(items) > 1 else None
        if pending is None:  # nothing to share
            remote = self._remote()
            pending = {remote.remote(fref, item): i for i, item in enumerate(items)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        yield i, ray.get(ref)
                    except RayTaskError as exc:  # raised in the task: a transient error (guarded ones are records)
                        cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
                        first = str(getattr(exc, "cause", None) or cause).strip().splitlines()
                        yield i, Lost(f"{type(getattr(exc, 'cause', exc)).__name__}: {first[-1] if first else ''}")
                    except RayError as exc:  # the worker died more often than max_retries, or the node is gone
                        msg = " ".join(str(exc).split())[:200]
                        yield i, Lost(f"{type(exc).__name__} after {self.max_retries} retries: {msg}")
        finally:
            for ref in pending:  # the driver stops (an interrupt, an error): nothing keeps running for it
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            self._snapshots = []

    def _submit_sharing(self, fn, fref, items: list) -> dict:
        """Submit ``items`` so that a prefix one item makes whole (``fn.offers``) and others use (``fn.wants``) is
        computed once: the offering items first, each returning its snapshots as a second value; every other item
        gets those values' refs, nested so that Ray does not wait for them (a worker takes a snapshot only if it is
        ready when needed, and computes it otherwise). Returns {ref of the outcome: index}, or None when no item
        offers a prefix another wants (nothing submitted)."""
        offers = [fn.offers(item) for item in items]
        wants = [fn.wants(item) for item in items]
        wanting = Counter(k for w in wants for k in set(w))  # how many items want each prefix
        shared = [[k for k in offers[i] if wanting[k] > (k in wants[i])] for i in range(len(items))]
        if not any(shared):
            return None
        order = sorted(range(len(items)), key=lambda i: not shared[i])  # stable: the rest keep their order
        one, two = self._remote(_in_worker_sharing), self._remote(_in_worker_sharing, num_returns=2)
        by_key: dict = {}
        pending = {}
        for i in order:
            wanted = {k: by_key[k] for k in wants[i] if k in by_key}
            if shared[i]:
                ref, snaps = two.remote(fref, items[i], wanted, shared[i], self.prefix_wait)
                for k in shared[i]:
                    by_key.setdefault(k, snaps)
            else:
                ref = one.remote(fref, items[i], wanted, [], self.prefix_wait)
            pending[ref] = i
        self._snapshots = list(by_key.values())  # held until the map ends (the workers take them by ref)
        return pending

    def close(self) -> None:
        if self._started:
            import ray

            for ref in getattr(self, "_warming", []):
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            self._warming = []
        if self._owns:
            import ray

            ray.shutdown()
            self._owns = False
        self._started = self._inherited = False


def make_executor(name: str = "serial", address: str | None = None, cpus_per_task: float | None = None,
                  gpus_per_task: float | None = None, max_retries: int = 3, num_cpus: int | None = None) -> Executor:
    """The executor a command line asks for (``--executor``, ``--address``, ``--cpus-per-task``,
    ``--gpus-per-task``), checked before anything is loaded: one-line errors on bad input."""
    if name not in EXECUTORS:
        raise bad("--executor", name, f"must be one of {list(EXECUTORS)}")
    ray_only = {"--address": address, "--cpus-per-task": cpus_per_task, "--gpus-per-task": gpus_per_task}
    if name == "serial":
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise bad(given[0], ray_only[given[0]], "applies to --executor ray only")
        return SerialExecutor()
    if not ray_installed():
        raise PihError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}")
    for k, v, minimum in (("--cpus-per-task", cpus_per_task, 0), ("--gpus-per-task", gpus_per_task, 0)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v < minimum):
            raise bad(k, v, "must be a number >= 0")
    if cpus_per_task is not None and cpus_per_task == 0 and not gpus_per_task:
        raise bad("--cpus-per-task", cpus_per_task, "a task needs some CPU or a GPU")
    if address is not None and (not isinstance(address, str) or not address or
                                (address != "auto" and not _host_port(address))):
        raise bad("--address", address, 'must be "auto", HOST:PORT or ray://HOST:PORT')
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise bad("max_retries", max_retries, "must be an integer >= 0")
    return RayExecutor(address=address, num_cpus=num_cpus, cpus_per_task=1.0 if cpus_per_task is None else
                       float(cpus_per_task), gpus_per_task=float(gpus_per_task or 0), max_retries=max_retries)


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing listens at HOST:PORT (None: a TCP connection was accepted)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _host_port(address: str) -> bool:
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def add_executor_args(p) -> None:
    """``--executor serial|ray [--address ...] [--cpus-per-task N] [--gpus-per-task N]`` on a subcommand."""
    p.add_argument("--executor", choices=EXECUTORS, default="serial",
                   help="serial (default: this process) or ray (tasks on a local Ray instance or a cluster; "
                   f"{RAY_INSTALL}). The driver is the only writer of the store; records are the same either way")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="with --executor ray: the cluster to join (auto: the one this node belongs to, started "
                   "by `ray start --head`); default: a local instance on this machine's CPUs")
    p.add_argument("--cpus-per-task", type=float, default=None, metavar="N",
                   help="with --executor ray: CPUs each task asks for (default 1)")
    p.add_argument("--gpus-per-task", type=float, default=None, metavar="N",
                   help="with --executor ray: GPUs each task asks for (default 0; 0.5: two tasks share a GPU)")


def executor_from_args(args) -> Executor:
    return make_executor(args.executor, args.address, args.cpus_per_task, args.gpus_per_task)


_current: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("pih_executor", default=None)


def current() -> Executor | None:
    """The executor :func:`using` set for this context (None: sweeps run in this process, as always)."""
    return _current.get()


@contextlib.contextmanager
def using(executor: Executor | None):
    """Run the sweeps inside the block (every :func:`pih.records.run_sweep` not given an executor) on
    ``executor``; a serial executor leaves them as they are."""
    token = _current.set(None if isinstance(executor, SerialExecutor) else executor)
    try:
        yield executor
    finally:
        _current.reset(token)


def groups_of(tasks: Iterable, group_by: Callable | None) -> list[list]:
    """Tasks with equal ``group_by(task)`` in one group (first-seen order); each task alone without it."""
    if group_by is None:
        return [[t] for t in tasks]
    out: dict[Any, list] = {}
    for t in tasks:
        out.setdefault(group_by(t), []).append(t)
    return list(out.values())


@dataclass(frozen=True)
class Imports:
    """A warm-up for :meth:`Executor.warm`: import these modules in the worker."""

    modules: tuple[str, ...]

    def __call__(self, _=None) -> int:
        import importlib

        for m in self.modules:
            importlib.import_module(m)
        return os.getpid()
