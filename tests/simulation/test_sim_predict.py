"""sim.predict: predicting a grid of A(Q->P) from exported layer tensors (pih compare's simulation side)."""

import json

import numpy as np
import pytest

import sim
from pih import PihError, Prune, Quantize
from sim.predict import layer_groups, predict_grid
from sim.sweep import ModelSpec, Pairing, run_grid
from sim.tensors import load_tensors, models_from_tensors

RATIOS, BITS = (0.25, 0.5), (2, 4)


def _specs(criterion="wanda", update="none"):
    return ([Prune(r, criterion=criterion) for r in RATIOS],
            [Quantize(b, symmetric=False, update=update) for b in BITS])


@pytest.mark.parametrize("assumptions", ["A1", "A1-lambda", "A2", "A1-weight"])
def test_predictor_reproduces_run_grid_on_the_same_tensors(assumptions):
    """One group of same-shape layers: the prediction is run_grid's A, M of each method alone and both orders."""
    spec = ModelSpec(n_layers=3, shape=(8, 16), n_samples=32)
    a = sim.assumptions.get(assumptions)
    P, Q = _specs()
    grid = run_grid(Pairing("w x rtn", P[0], Q[0]), RATIOS, BITS, seeds=[5], model=spec, assumptions=a,
                    progress=False)
    rows = predict_grid(spec.make(5), P, Q, [a], seed=5, progress=False)
    assert len(rows) == len(RATIOS) * len(BITS)
    for r in rows:
        bi, ri = BITS.index(r["quant"]), RATIOS.index(r["prune"])
        assert r["assumption_set"] == assumptions
        assert r["A_pred"] == pytest.approx(float(grid.A[0, bi, ri]), rel=1e-12, abs=1e-15)
        assert r["M_pf"] == pytest.approx(float(grid.M_pf[0, bi, ri]), rel=1e-12)
        assert r["M_qf"] == pytest.approx(float(grid.M_qf[0, bi, ri]), rel=1e-12)
        assert r["M_P"] == pytest.approx(float(grid.M_P[0, ri]), rel=1e-12)
        assert r["M_Q"] == pytest.approx(float(grid.M_Q[0, bi]), rel=1e-12)
        assert r["A_pred"] == pytest.approx(r["M_qf"] - r["M_pf"], abs=1e-15)


def _export_like(tmp_path, fmt="bridge"):
    """Tensors in the bridge's export format (W::/X:: and a JSON meta string) or the .weight/.inputs one."""
    rng = np.random.default_rng(0)
    out = {}
    for name, (o, i) in {"b0.q": (8, 16), "b0.up": (12, 16), "b1.q": (8, 16), "b0.down": (16, 12)}.items():
        W, X = rng.standard_normal((o, i)).astype(np.float32), rng.standard_normal((40, i)).astype(np.float32)
        if fmt == "bridge":
            out[f"W::{name}"], out[f"X::{name}"] = W, X
        else:
            out[f"{name}.weight"], out[f"{name}.inputs"] = W, X
    if fmt == "bridge":
        out["meta"] = np.array(json.dumps({"model": "synthetic"}))
    path = tmp_path / f"{fmt}.npz"
    np.savez(path, **out)
    return path


def test_both_export_formats_are_read(tmp_path):
    """The bridge writes W::<layer>/X::<layer> (+ a meta string); sim also reads <layer>.weight/<layer>.inputs."""
    tb, tw = load_tensors(_export_like(tmp_path, "bridge")), load_tensors(_export_like(tmp_path, "weight"))
    assert "meta" not in tb  # the JSON string is not a tensor
    mb, mw = models_from_tensors(tb), models_from_tensors(tw, max_samples=32)
    assert set(mb) == set(mw) == {"b0.q", "b0.up", "b1.q", "b0.down"}
    for n in mb:
        np.testing.assert_array_equal(np.asarray(mb[n].W), np.asarray(mw[n].W))
        assert mb[n].X.shape == (1, mb[n].W.shape[2], 40) and mw[n].X.shape[2] == 32  # X stored (in, n)
        np.testing.assert_array_equal(np.asarray(mb[n].X)[..., :32], np.asarray(mw[n].X))
    with pytest.raises(PihError, match="no calibration inputs"):
        models_from_tensors({"W::a": np.ones((2, 2))})


def test_layers_of_one_shape_are_stacked(tmp_path):
    groups = layer_groups(load_tensors(_export_like(tmp_path)), max_samples=24)
    shapes = {tuple(names): tuple(m.W.shape) + (m.X.shape[2],) for names, m in groups}
    assert shapes == {("b0.q", "b1.q"): (2, 8, 16, 24), ("b0.up",): (1, 12, 16, 24), ("b0.down",): (1, 16, 12, 24)}


def test_prediction_over_several_shapes_and_sets(tmp_path):
    P, Q = _specs()
    rows = predict_grid(load_tensors(_export_like(tmp_path)), P, Q, ["A1", "ppl", "correlated"], progress=False)
    assert len(rows) == 3 * len(RATIOS) * len(BITS)
    by = {(r["assumption_set"], r["prune"], r["quant"]): r for r in rows}
    for (_s, p, b), r in by.items():
        assert np.isfinite(r["A_pred"]) and r["M_pf"] < 0 and r["M_qf"] < 0
        # ppl is a monotone map of A1's relative error: same errors, so the same order
        assert np.sign(by[("ppl", p, b)]["A_pred"]) == np.sign(by[("A1", p, b)]["A_pred"])
    # the prediction comes from the tensors: other tensors give other numbers
    rows2 = predict_grid(load_tensors(_export_like(tmp_path, "weight")), P, Q, ["A1"], progress=False,
                         max_samples=16)
    assert [r["A_pred"] for r in rows2] != [by[("A1", r["prune"], r["quant"])]["A_pred"] for r in rows2]


def test_bad_inputs(tmp_path):
    P, Q = _specs()
    t = load_tensors(_export_like(tmp_path))
    with pytest.raises(PihError, match="assumptions"):
        predict_grid(t, P, Q, ["no-such-set"], progress=False)
    with pytest.raises(PihError, match="differ only"):
        predict_grid(t, [P[0], Prune(0.5, criterion="magnitude")], Q, ["A1"], progress=False)
    with pytest.raises(PihError, match="pih.Quantize"):
        predict_grid(t, P, P, ["A1"], progress=False)
    with pytest.raises(PihError, match="layers"):
        predict_grid({}, P, Q, ["A1"], progress=False)
