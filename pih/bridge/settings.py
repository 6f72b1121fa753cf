"""The bridge's method settings the specs do not carry (recorded in every record's provenance)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._common import bad

#: the pruners' selection rules (pih.bridge.prune) and the Hessian inverse's dtypes (pih.bridge.quant), here so
#: that reading settings needs no torch
SELECTIONS = ("exact", "reference")
HESSIAN_DTYPES = ("float32", "float64")

OFFGRID_POLICIES = ("requantize", "keep", "forbid")


@dataclass(frozen=True)
class BridgeSettings:
    """Method settings the specs do not carry. Recorded in every record's provenance."""

    blocksize: int = 128  # GPTQ / SparseGPT lazy-batch block (SparseGPT's mask block)
    percdamp: float = 0.01  # Hessian damping, fraction of mean diag
    act_order: bool = False  # GPTQ column order by decreasing diag(H)
    offgrid: str = "requantize"  # requantize | keep | forbid
    sequential: bool = True  # calibrate block i on the outputs of the compressed blocks < i
    batch_size: int = 8  # calibration / evaluation windows per forward
    mp_order: str = "as_listed"  # mixed precision: as_listed | progressive (high bits first) | regressive
    # precision of the damped Hessian's Cholesky factors and inverse (GPTQ / SparseGPT): float32 is the reference
    # code's (the same H⁻¹ bit for bit, hence the same weights); float64 the bridge's default before it
    hessian_dtype: str = "float32"
    # which weights a pruner takes: exact (exactly int(ratio · group) per comparison group, ties at random) or
    # reference (the reference code's: SparseGPT/magnitude every score <= the sorted value at position k, i.e.
    # k + 1 per block; Wanda ties by index; N:M by torch.topk)
    selection: str = "exact"

    def __post_init__(self) -> None:
        if self.offgrid not in OFFGRID_POLICIES:
            raise bad("offgrid", self.offgrid, f"must be one of {OFFGRID_POLICIES}")
        if not isinstance(self.blocksize, int) or self.blocksize < 1:
            raise bad("blocksize", self.blocksize, "must be a positive integer")
        if not (isinstance(self.percdamp, (int, float)) and 0 < self.percdamp < 1):
            raise bad("percdamp", self.percdamp, "must lie in (0, 1)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "must be a positive integer")
        if self.mp_order not in ("as_listed", "progressive", "regressive"):
            raise bad("mp_order", self.mp_order, "must be as_listed, progressive or regressive")
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise bad("hessian_dtype", self.hessian_dtype, f"must be one of {HESSIAN_DTYPES}")
        if self.selection not in SELECTIONS:
            raise bad("selection", self.selection, f"must be one of {SELECTIONS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
