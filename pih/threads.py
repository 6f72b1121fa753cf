"""One process-wide thread policy: torch's intra-op threads and the BLAS pools set together, numpy analysis on one.

``set_threads(n)`` sets, from a run's ``threads``, torch's intra-op pool (``torch.set_num_threads``, when torch is
loaded; the bridge calls it after importing torch) and every BLAS library loaded in the process (numpy's and
scipy's OpenBLAS, an external BLAS torch links to) through threadpoolctl, so that no library keeps a pool of its
own size. ``n = 0`` leaves the libraries' defaults. ``numpy_analysis()`` pins the BLAS pools to one thread for a
block of numpy work: the pair analysis and the grid statistics are many small dot products, where a second BLAS
thread only spins (on a busy 2-core machine a 40k-element dot product went from 19 us to 104 us with OpenBLAS's 2
threads; the pair analysis of the smoke run took 5.5 s with 2 BLAS threads and 0.4 s with one).

The default is :data:`DEFAULT` = 1 thread. Measured on the 2-core machine (``benchmarks/bench_threads.py``,
``experiments/measured/bench_threads_cpu.md``): a second thread halves GEMM-bound work on an idle machine, but with
one other busy process it gains nothing there and makes GPTQ 1.3x and the numpy analysis 1.4x slower; one thread
never collapses. On a machine known to be idle, ask for 2 (``threads = 2``).

The bridge's compression kernels run on one thread each whatever ``threads`` is (with 2 or more, a block's layers
are compressed side by side, ``pih.bridge.engine``): MKL's Cholesky factorisation rounds differently on 1 and 2
threads, which made a SparseGPT or GPTQ run's weights depend on the thread count; now they do not (SmolLM2,
threads 1 and 2: the same weights, bitwise). The forward passes and Hessians use all ``threads``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from .errors import bad

DEFAULT = 1
_state: dict[str, int | None] = {"threads": None}


def check_threads(threads, name: str = "threads") -> int:
    """``threads`` as a validated int (0 = the libraries' defaults); one-line error naming ``name`` otherwise."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise bad(name, threads, "must be a non-negative integer (0 leaves the libraries' own thread counts)")
    return threads


def _blas_limits(n: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    return threadpool_limits(limits=n, user_api="blas")


def set_threads(threads: int, name: str = "threads") -> int | None:
    """Apply the policy for ``threads`` (see the module doc) to this process; returns the policy in force (None:
    the libraries' defaults). Call it again after importing torch for the first time (``apply()``)."""
    n = check_threads(threads, name)
    if n == 0:
        return _state["threads"]
    _state["threads"] = n
    apply()
    return n


def apply() -> None:
    """Re-apply the current policy (to libraries loaded since it was set)."""
    n = _state["threads"]
    if n is None:
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _blas_limits(n)


def current() -> int | None:
    """The thread count set by :func:`set_threads` (None: not set, the libraries' defaults)."""
    return _state["threads"]


@contextlib.contextmanager
def numpy_analysis() -> Iterator[None]:
    """Run the enclosed numpy analysis with every BLAS pool on one thread (restored afterwards)."""
    lim = _blas_limits(1)
    try:
        yield
    finally:
        if lim is not None:
            lim.restore_original_limits()
