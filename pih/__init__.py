"""pih: which goes first, pruning or quantization, and why.

The framework-free core (numpy + scipy): method specs, units and ownership, the metrics G, CER and A, order
search, and one record type with a crash-safe store. The JAX simulation lives in ``sim``; the torch bridge in
``pih.bridge`` (imported only when used).
"""

from . import registry  # noqa: E402  (the method registry: pih.registry.register_method, register_kernel, ...)
from .advice import Advice, evidence
from .analysis import GridAnalysis, GridPoint, LineTest, SeedSummary, analyze_grid, order_advantage_of, seed_summary
from .errors import PihError, ProtocolMismatch, check_tensor
from .methods import (
    Joint,
    MixedPrecision,
    Prune,
    Quantize,
    RemoveBlocks,
    Spec,
    n_pruned,
    pipeline_label,
    spec_from_dict,
)
from .metrics import (
    CER,
    Monotonicity,
    QuantCurve,
    monotonicity,
    order_advantage,
    performance_gap,
    ratio_16_over_b,
)
from .order import OrderSearch, all_orders, predicted_order, search_orders
from .ownership import (
    Granularity,
    PairDecomposition,
    T1Decomposition,
    direct_advantage,
    disjoint_selectivity,
    interference,
    owned_errors,
    owner_errors,
    owners_from_mask,
    pair_decomposition,
    quantization_errors,
    removal_errors,
    theorem1,
)
from .records import (
    Provenance,
    Record,
    Store,
    Task,
    grid_coords,
    grid_role,
    record_key,
    require_same_protocol,
    run_sweep,
)
from .stats import (  # noqa: E402
    ClusterBootstrap,
    PermutationTest,
    SeedStat,
    cluster_bootstrap,
    noise_floor,
    permutation_test,
    seed_stat,
)

__version__ = "0.1.0"

__all__ = [
    "registry",
    "Advice",
    "evidence",
    "GridAnalysis",
    "GridPoint",
    "LineTest",
    "SeedSummary",
    "analyze_grid",
    "order_advantage_of",
    "seed_summary",
    "SeedStat",
    "ClusterBootstrap",
    "PermutationTest",
    "noise_floor",
    "seed_stat",
    "permutation_test",
    "cluster_bootstrap",
    "CER",
    "Granularity",
    "Joint",
    "MixedPrecision",
    "Monotonicity",
    "OrderSearch",
    "PihError",
    "ProtocolMismatch",
    "Provenance",
    "Prune",
    "Quantize",
    "QuantCurve",
    "Record",
    "RemoveBlocks",
    "Spec",
    "Store",
    "T1Decomposition",
    "Task",
    "all_orders",
    "check_tensor",
    "direct_advantage",
    "disjoint_selectivity",
    "grid_coords",
    "grid_role",
    "interference",
    "monotonicity",
    "n_pruned",
    "order_advantage",
    "owned_errors",
    "owner_errors",
    "pair_decomposition",
    "PairDecomposition",
    "quantization_errors",
    "removal_errors",
    "owners_from_mask",
    "performance_gap",
    "pipeline_label",
    "predicted_order",
    "ratio_16_over_b",
    "record_key",
    "require_same_protocol",
    "run_sweep",
    "search_orders",
    "spec_from_dict",
    "theorem1",
]
