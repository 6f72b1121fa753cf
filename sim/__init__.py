"""sim: a JAX simulation that compresses real tensors and measures the error.

Process-wide JAX settings (a choice, recorded in :data:`JAX_SETTINGS`): importing ``sim`` turns on float64 in JAX
(``jax_enable_x64``) for the whole process, and turns XLA's XNNPACK CPU fusions off unless ``XLA_FLAGS`` names
them. float64 cannot be scoped to the simulation's own calls: its kernels are registered in ``pih.registry`` and
called by other code (the conformance and parity suites, user plugins) on arrays made outside any sim entry
point, and a JAX array's dtype is fixed when it is made, so a scoped switch would silently hand those callers
float32 results. So the switch is global and never silent: it is recorded in :data:`JAX_SETTINGS`, and when JAX
had already computed in float32 before ``sim`` was imported (arrays made before keep float32, later ones default
to float64), a ``pih.PihWarning`` says so. ``pih`` itself never imports JAX.

Layout:
- :mod:`sim.tensors`      weight and activation generators, a loader for exported tensors
- :mod:`sim.mechanisms`   pruning and quantization as pure JAX functions
- :mod:`sim.kernels`      one kernel per registered method (``pih.registry``'s contract), ``SimOptions``
- :mod:`sim.pipeline`     the executor loop: pipelines of core specs, per-unit errors and owner maps, pairs
- :mod:`sim.sweep`        grids: tasks through ``pih.run_sweep``, analysed by ``pih.analyze_grid``
- :mod:`sim.assumptions`  assumption sets (A1, A2 and user variants) as values
- :mod:`sim.kuzmin`       the analytic N(0,1) / Student-t SNR baseline (exact integration and Monte Carlo)
- :mod:`sim.presets`      the presets behind ``pih simulate`` (data; ``pih.render_plots`` draws them)
"""

import os
import sys
import warnings

# XLA's CPU runtime with XNNPACK fusions was seen to hang for good (every thread idle, the result never ready) on
# the deep sequential programs of sim.chain on a 2-core machine; the simulation runs in float64, which XNNPACK
# does not accelerate, so it is turned off unless the user set it. Read when the backend starts (first use).
_xla_before = os.environ.get("XLA_FLAGS")
if "xla_cpu_use_xnnpack" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_xnnpack=false").strip()
_jax_running = "jax" in sys.modules

import jax  # noqa: E402


def _jax_in_use() -> bool:
    """Whether JAX had computed anything before sim was imported (its backend started)."""
    if not _jax_running:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without that function: imported at all counts as in use
        return True


_x64_before = bool(jax.config.jax_enable_x64)
jax.config.update("jax_enable_x64", True)


def _compilation_cache_from_env() -> str | None:
    """``PIH_JAX_CACHE`` (``pih simulate --compile-cache``; a Ray worker inherits it): a folder where XLA keeps the
    programs it compiled, so that a later process (a rerun, another seed's worker) loads them instead of compiling
    again (the simulation's grid program takes ~5 s to compile on 2 cores, ~2 s to load). Off unless given, as in
    JAX itself: on some CPUs XLA rejects every stored program (jax-ml/jax#38445) and recompiles, logging an error
    each time. A folder JAX was given by its own setting (``JAX_COMPILATION_CACHE_DIR``) is left as it is. The
    stored programs are those XLA would compile (the records are equal either way; tests/simulation hold that)."""
    raw = os.environ.get("PIH_JAX_CACHE", "").strip()
    if not raw or raw.lower() == "off":
        return jax.config.jax_compilation_cache_dir or None
    path = os.path.abspath(os.path.expanduser(raw))
    jax.config.update("jax_compilation_cache_dir", path)
    try:  # a size cap turns on JAX's file lock: processes writing and reading one entry at once see it whole
        import filelock  # noqa: F401

        jax.config.update("jax_compilation_cache_max_size", 4 << 30)
    except ImportError:
        pass
    return path


_cache_before = jax.config.jax_compilation_cache_dir or None
_compilation_cache = _compilation_cache_from_env()


def _xla_threads_from_env() -> int | None:
    """``PIH_XLA_THREADS`` (``pih simulate --threads``; a Ray worker gets its task's CPUs): XLA's CPU pool size."""
    raw = os.environ.get("PIH_XLA_THREADS", "").strip()
    if not raw or raw == "0":
        return None
    if not raw.isdigit():
        from pih.errors import PihError

        raise PihError(f"PIH_XLA_THREADS={raw!r}: must be a non-negative integer (0: XLA's default, every CPU)")
    return int(raw)


def _start_backend_with(threads: int) -> int:
    """Start JAX's CPU backend with a pool of ``threads`` threads; returns the pool size in force.

    XLA sizes its CPU thread pool from the CPUs the process may run on when the backend starts (there is no flag for
    it), so the calling thread's CPU mask is narrowed to ``threads`` CPUs for the start, then every thread of the
    process, the pool's included, gets the whole mask back: the pool has ``threads`` threads and the OS still places
    them on any CPU. A pool as large as the machine (XLA's default) runs independent operations of one program side
    by side, so one process already uses more than one core; two such processes on two cores oversubscribe them."""
    full = os.sched_getaffinity(0)
    if threads >= len(full):
        jax.devices("cpu")
        return len(full)
    os.sched_setaffinity(0, set(sorted(full)[:threads]))
    try:
        jax.devices("cpu")
    finally:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), full)
            except (ProcessLookupError, PermissionError):  # a thread that has just exited
                pass
    return threads


_xla_threads = _xla_threads_from_env() if hasattr(os, "sched_setaffinity") else None
if _xla_threads is not None and not _jax_in_use():
    _xla_threads = _start_backend_with(_xla_threads)
elif _xla_threads is not None:  # the backend had started before sim was imported: its pool is what it is
    from pih.errors import PihWarning

    warnings.warn(f"PIH_XLA_THREADS={_xla_threads} has no effect: JAX's CPU backend had started before sim was "
                  "imported, with XLA's default pool", PihWarning, stacklevel=2)
    _xla_threads = None

JAX_SETTINGS = {  # what importing sim changed for the whole process: {setting: {"before": ..., "after": ...}}
    "jax_enable_x64": {"before": _x64_before, "after": True},
    "XLA_FLAGS": {"before": _xla_before, "after": os.environ["XLA_FLAGS"]},
    "xla_threads": {"before": None, "after": _xla_threads},  # None: XLA's default pool (one thread per CPU)
    "compilation_cache": {"before": _cache_before, "after": _compilation_cache},  # None: every process compiles its own
}
if not _x64_before and _jax_in_use():
    from pih.errors import PihWarning

    warnings.warn("importing sim turned on jax_enable_x64 for the whole process (the simulation runs in float64): "
                  "JAX arrays made before keep their float32 dtype, arrays made from now on default to float64",
                  PihWarning, stacklevel=2)

from . import kernels  # noqa: E402  (registers the simulation's kernels in pih.registry)
from .assumptions import A1, A2, A2_SEEN, ASSUMPTION_SETS, AssumptionSet  # noqa: E402
from .kernels import SimOptions  # noqa: E402
from .pipeline import PairResult, run_pair, run_pipeline, stage_from_spec  # noqa: E402
from .predict import predict_grid  # noqa: E402
from .sweep import Grid, ModelSpec, Pairing, run_grid  # noqa: E402
from .tensors import Model, activations, layer, load_tensors, make_model  # noqa: E402

__all__ = [
    "A1",
    "A2",
    "A2_SEEN",
    "ASSUMPTION_SETS",
    "JAX_SETTINGS",
    "AssumptionSet",
    "Grid",
    "Model",
    "ModelSpec",
    "PairResult",
    "Pairing",
    "SimOptions",
    "activations",
    "kernels",
    "layer",
    "load_tensors",
    "make_model",
    "predict_grid",
    "run_grid",
    "run_pair",
    "run_pipeline",
    "stage_from_spec",
]
