"""Per-weight ownership analysis of a (P, Q) pair on real weights, computed with the core's own functions.

Units are the weights of every compressible layer (a convolution as its 2-D (out, in·kh·kw) view, λ per column
from its unfolded inputs). For a pruner P and a quantizer Q, each applied alone to
the dense model φ: ``errors[0, u] = (W0 − W_P)²_u``, ``errors[1, u] = (W0 − W_Q)²_u``. Sensitivities
``λ_u = mean ||x_j||²`` of the layer's dense calibration input for the weight's input column j (the output error a
lone perturbation of that weight causes, per token). Owner maps: in P→Q (P first) a weight is owned by P if the
final mask prunes it, else by Q; likewise in Q→P. The core computes the Theorem 1 decomposition
(:func:`pih.theorem1`), the direct sums (:func:`pih.direct_advantage`) and the interference (:func:`pih.interference`)
with the composed model's per-unit errors ``(W0 − W_final)²``. Everything is in λ-weighted squared weight error,
with A(P→Q) = err(Q first) − err(P first) (performance M = −error); A(Q→P) = −A(P→Q).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import direct_advantage, interference, owners_from_mask, theorem1


def unit_arrays(W0: torch.Tensor, Wp: torch.Tensor, Wq: torch.Tensor, lam_cols: torch.Tensor):
    e = torch.stack([(W0 - Wp) ** 2, (W0 - Wq) ** 2]).reshape(2, -1).double().numpy()
    lam = lam_cols.double()[None, :].expand_as(W0).reshape(-1).numpy()
    return e, lam


def layer_terms(W0, Wp, Wq, W_final, mask_final, lam_cols):
    """Per-layer: errors, λ, owners and total error for one composed model."""
    e, lam = unit_arrays(W0, Wp, Wq, lam_cols)
    owners = owners_from_mask(mask_final.reshape(-1).numpy())
    total = ((W0 - W_final) ** 2).reshape(-1).double().numpy()
    return e, lam, owners, total


def pair_analysis(dense: dict, p_alone: dict, q_alone: dict, pq: dict, qp: dict, mask_pq: dict, mask_qp: dict,
                  lam: dict, keep_units: bool = False) -> tuple[dict, dict]:
    """Theorem 1 and interference for the pair, summed over layers; returns (summary, per-layer arrays)."""
    names = list(dense)
    per = {k: np.zeros(len(names)) for k in ("t1", "direct", "n_changed", "delta_pq", "delta_qp", "err_pq",
                                             "err_qp", "n_units")}
    units: dict[str, list] = {"errors": [], "owners_pq": [], "owners_qp": [], "total_pq": [], "total_qp": [],
                              "sensitivities": []}
    for i, n in enumerate(names):
        W0 = dense[n]
        e, lam_u = unit_arrays(W0, p_alone[n], q_alone[n], lam[n])
        oa = owners_from_mask(mask_pq[n].reshape(-1).numpy())
        ob = owners_from_mask(mask_qp[n].reshape(-1).numpy())
        ta = ((W0 - pq[n]) ** 2).reshape(-1).double().numpy()
        tb = ((W0 - qp[n]) ** 2).reshape(-1).double().numpy()
        t1 = theorem1(e, oa, ob, lam_u)
        per["t1"][i] = t1.advantage
        per["n_changed"][i] = t1.n_changed
        per["direct"][i] = direct_advantage(e, oa, ob, lam_u)
        per["delta_pq"][i] = interference(ta, oa, e, lam_u)
        per["delta_qp"][i] = interference(tb, ob, e, lam_u)
        per["err_pq"][i] = float(lam_u @ ta)
        per["err_qp"][i] = float(lam_u @ tb)
        per["n_units"][i] = e.shape[1]
        if keep_units:
            units["errors"].append(e.astype(np.float32))
            units["owners_pq"].append(oa.astype(np.int8))
            units["owners_qp"].append(ob.astype(np.int8))
            units["total_pq"].append(ta.astype(np.float32))
            units["total_qp"].append(tb.astype(np.float32))
            units["sensitivities"].append(lam_u.astype(np.float32))
    s = {k: float(v.sum()) for k, v in per.items()}
    summary = {
        "units": "weights of all compressible linear layers; λ = mean squared dense calibration input per column",
        "A_PQ_t1": s["t1"],  # A(P→Q) predicted by Theorem 1 (disjoint part)
        "A_PQ_direct": s["direct"],
        "t1_identity_gap": abs(s["t1"] - s["direct"]),
        "n_changed": int(s["n_changed"]),
        "n_units": int(s["n_units"]),
        "delta_PQ": s["delta_pq"],
        "delta_QP": s["delta_qp"],
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
