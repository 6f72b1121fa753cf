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

import jax

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
