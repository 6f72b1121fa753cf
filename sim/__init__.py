"""sim: a JAX simulation that compresses real tensors and measures the error.

Importing ``sim`` turns on float64 in JAX (``jax_enable_x64``); ``pih`` itself never imports JAX.

Layout:
- :mod:`sim.tensors`      weight and activation generators, a loader for exported tensors
- :mod:`sim.mechanisms`   pruning and quantization as pure JAX functions
- :mod:`sim.pipeline`     stages, pipelines in any order, per-unit errors and owner maps, vmapped sweeps
- :mod:`sim.assumptions`  assumption sets (A1, A2 and user variants) as values
- :mod:`sim.kuzmin`       the analytic N(0,1) / Student-t SNR baseline (exact integration and Monte Carlo)
- :mod:`sim.presets`      the presets behind ``pih simulate``
"""

import os

# XLA's CPU runtime with XNNPACK fusions was seen to hang for good (every thread idle, the result never ready) on
# the deep sequential programs of sim.chain on a 2-core machine; the simulation runs in float64, which XNNPACK
# does not accelerate, so it is turned off unless the user set it. Read when the backend starts (first use).
if "xla_cpu_use_xnnpack" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_xnnpack=false").strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from .assumptions import A1, A2, A2_SEEN, ASSUMPTION_SETS, AssumptionSet  # noqa: E402
from .pipeline import Model, PairResult, run_pair, run_pipeline, stage_from_spec  # noqa: E402
from .tensors import activations, layer, load_tensors, make_model  # noqa: E402

__all__ = [
    "A1",
    "A2",
    "A2_SEEN",
    "ASSUMPTION_SETS",
    "AssumptionSet",
    "Model",
    "PairResult",
    "activations",
    "layer",
    "load_tensors",
    "make_model",
    "run_pair",
    "run_pipeline",
    "stage_from_spec",
]
