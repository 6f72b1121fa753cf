"""Per-weight ownership analysis of a (P, Q) pair on real weights, computed with the core's own definitions.

Units are the weights of every compressible layer (a convolution as its 2-D (out, in·kh·kw) view, λ per column
from its unfolded inputs). The owner errors are the proofs' (``pih.ownership.owner_errors``): the pruner's error of
a unit is its removal error on the dense model φ, ``r_u = w0_u²``, for *every* unit (pruned or not in any run);
the quantizer's is ``q_u = (w0_u − Q(φ)_u)²`` with Q applied alone to φ. Sensitivities ``λ_u = mean ||x_j||²`` of
the layer's dense calibration input for the weight's input column j (the output error a lone perturbation of that
weight causes, per token). Owner maps: in P→Q (P first) a weight is owned by P if the final mask prunes it, else by
Q; likewise in Q→P. The core computes the Theorem 1 decomposition, the direct sums and the interference Δ (the
composed model's error not accounted for by its owners) with the composed model's per-unit errors
``(w0 − w_final)²``. A pruned weight is 0 in the final model, so its error is exactly r_u: Δ comes from kept
weights only — a quantization grid changed by pruning (P first), or weights moved by a weight update (SparseGPT's,
GPTQ's compensation of pruned weights). With magnitude/Wanda pruning and a quantizer without update applied first,
Δ_QP = 0 exactly. Everything is in λ-weighted squared weight error, A(P→Q) = err(Q first) − err(P first)
(performance M = −error); A(Q→P) = −A(P→Q).
"""

from __future__ import annotations

import numpy as np

from ..ownership import pair_decomposition

UNITS = ("weights of all compressible layers; owner errors: removal error w0^2 (pruner, every unit) and "
         "(w0 - Q(w0))^2 (quantizer alone on the dense model); lambda = mean squared dense calibration input per "
         "column")


def pair_analysis(dense: dict, q_alone: dict, pq: dict, qp: dict, mask_pq: dict, mask_qp: dict, lam: dict,
                  keep_units: bool = False) -> tuple[dict, dict]:
    """Theorem 1 and interference for the pair, summed over layers; returns (summary, per-layer arrays).

    Every argument but ``keep_units`` maps layer names to CPU tensors: the dense weights, Q alone on φ, the final
    weights of P→Q and Q→P and their pruned masks (True = pruned), and λ per input column."""
    names = list(dense)
    per = {k: np.zeros(len(names)) for k in ("t1", "direct", "n_changed", "delta_pq", "delta_qp", "err_pq",
                                             "err_qp", "n_units")}
    units: dict[str, list] = {k: [] for k in ("errors", "owners_pq", "owners_qp", "total_pq", "total_qp",
                                              "sensitivities")}
    for i, n in enumerate(names):
        W0 = dense[n].double()
        lam_u = lam[n].double()[None, :].expand_as(W0).reshape(-1).numpy()
        dec, arr = pair_decomposition(W0.numpy(), q_alone[n].double().numpy(), pq[n].double().numpy(),
                                      mask_pq[n].numpy(), qp[n].double().numpy(), mask_qp[n].numpy(), lam_u,
                                      keep_units=keep_units)
        per["t1"][i] = dec.a_pq_t1
        per["direct"][i] = dec.a_pq_direct
        per["n_changed"][i] = dec.n_changed
        per["delta_pq"][i] = dec.delta_pq
        per["delta_qp"][i] = dec.delta_qp
        per["err_pq"][i] = dec.err_pq
        per["err_qp"][i] = dec.err_qp
        per["n_units"][i] = dec.n_units
        if keep_units:
            units["errors"].append(arr["errors"].astype(np.float32))
            units["owners_pq"].append(arr["owners_pq"].astype(np.int8))
            units["owners_qp"].append(arr["owners_qp"].astype(np.int8))
            for k in ("total_pq", "total_qp", "sensitivities"):
                units[k].append(arr[k].astype(np.float32))
    s = {k: float(v.sum()) for k, v in per.items()}
    summary = {
        "units": UNITS,
        "A_PQ_t1": s["t1"],  # A(P→Q) predicted by Theorem 1 (disjoint part)
        "A_PQ_direct": s["direct"],
        "t1_identity_gap": abs(s["t1"] - s["direct"]),
        "n_changed": int(s["n_changed"]),
        "n_units": int(s["n_units"]),
        "delta_PQ": s["delta_pq"],
        "delta_QP": s["delta_qp"],
        "err_PQ": s["err_pq"],
        "err_QP": s["err_qp"],
        "A_PQ_error_actual": s["err_qp"] - s["err_pq"],  # = t1 + delta_QP - delta_PQ
        "decomposition_gap": abs((s["err_qp"] - s["err_pq"]) - (s["t1"] + s["delta_qp"] - s["delta_pq"])),
    }
    arrays = {f"layer_{k}": v for k, v in per.items()}
    arrays["layer_names"] = np.array(names)
    if keep_units:
        arrays["errors"] = np.concatenate(units["errors"], axis=1)
        for k in ("owners_pq", "owners_qp", "total_pq", "total_qp", "sensitivities"):
            arrays[k] = np.concatenate(units[k])
    return summary, arrays
