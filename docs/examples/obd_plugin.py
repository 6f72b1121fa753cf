"""A user's plugin: a new pruner that runs in the simulation, the torch bridge and ``pih advise``, and a new
assumption set for ``pih simulate``, registered from this one file and nothing else (see docs/plugins.md).

The pruner, "obd", is Optimal Brain Damage's saliency without its weight update: remove the weights with the
smallest w_ij² · H_jj over the whole tensor (H the Gram matrix of the layer's inputs; Wanda ranks the same score
per output row). Used as ``pih --plugin docs/examples/obd_plugin.py run CONFIG`` (``[prune] criterion = "obd"``),
``... advise MODEL --prune obd:0.5 --quantize gptq:4`` and ``... simulate --preset disjoint --assumptions sqrt``.
"""

from __future__ import annotations

import numpy as np

from pih import registry
from pih.methods import parse_ratio_or_nm

# 1. the method: its name (Prune(criterion="obd")), the statistics its kernels need, its structures, its CLI syntax
registry.register_method(registry.Method(
    "obd", "prune", stats="hessian", structures=("unstructured",), syntax="obd:RATIO",
    description="Optimal Brain Damage saliency w²·H_jj per tensor, no update",
    parse=parse_ratio_or_nm))


# 2. the torch bridge's kernel (one weight matrix, float32 torch tensors)
def obd_torch(spec, W, stats, state, key, setting, **_):
    from pih.bridge.prune import magnitude

    # ranking |w_ij| · sqrt(H_jj) over the tensor is ranking w_ij² · H_jj; magnitude() keeps earlier pruned weights
    # pruned, takes exactly int(ratio · n) and breaks ties with ``key`` (a generator or priorities)
    scaled = W * stats.H.diagonal().clamp_min(0).sqrt()[None, :]
    mask = magnitude(scaled, setting, None, state.pruned, key)
    return W.masked_fill(mask, 0), state.replace(pruned=mask)


# 3. the simulation's kernel (JAX arrays; ``setting`` may be a traced ratio)
def obd_sim(spec, W, stats, state, key, setting, **_):
    import jax.numpy as jnp

    from sim import mechanisms as mech

    # the simulation's state always carries a mask (nothing pruned: all False); pruned weights count first
    keep = mech.keep_lowest_removed(W * W * jnp.diag(stats.H)[None, :], setting, key, None, state.pruned)
    keep = keep & ~state.pruned
    return W * keep, state.replace(pruned=~keep)


registry.register_kernel("obd", "torch", obd_torch)
registry.register_kernel("obd", "sim", obd_sim)


# 4. an assumption set: performance concave in the relative output error (M = -sqrt(error))
def sqrt_performance(e, lam, dense) -> float:
    return -float(np.sqrt(np.sum(lam * e) / np.sum(lam * dense)))


def _register_assumptions() -> None:
    try:
        from sim.assumptions import AssumptionSet, register
    except ImportError:  # the simulation's extra (JAX) is not installed: the bridge side still works
        return
    register(AssumptionSet("sqrt", "A1 with M = -sqrt(relative output error)", performance=sqrt_performance))


_register_assumptions()
