"""Block-by-block pipelines on the tiny LLaMA: masks survive, grids, off-grid policy, block removal, calibration."""

import pytest
import torch

from pih import PihError, Prune, Quantize, RemoveBlocks
from pih.bridge.blocks import capture_block_inputs, collect_stats, layer_names
from pih.bridge.engine import BridgeSettings, apply_pipeline, effective_weights
from pih.bridge.evaluate import perplexity
from pih.bridge.models import linears_of


def _weights(lm):
    return {n: w.clone() for n, w in effective_weights(lm, type("S", (), {"removed": []})()).items()}


@pytest.mark.parametrize("quant", [Quantize(3, symmetric=False, update="gptq"), Quantize(4, group=32),
                                   Quantize(2, scale="mse", symmetric=False)])
@pytest.mark.parametrize("prune", [Prune(0.5, "wanda"), Prune(0.5, "sparsegpt", "2:4"), Prune(0.4, "magnitude")])
def test_mask_survives_quantization_exactly(tiny, calib, prune, quant):
    state = apply_pipeline(tiny, (prune,), calib, progress=False)
    masks = {k: v.clone() for k, v in state.masks.items()}
    apply_pipeline(tiny, (quant,), calib, state=state, progress=False, start_index=1)
    w = _weights(tiny)
    for n, m in masks.items():
        assert torch.equal(state.masks[n], m)
        assert torch.all(w[n][m] == 0), n
        assert torch.all(state.grids[n].on_grid(w[n]))
    assert set(masks) == set(layer_names(tiny))


def test_nm_not_dividing_a_layer_is_an_error(tiny, calib):
    with pytest.raises(PihError, match="structure.*3:5|M=5"):
        apply_pipeline(tiny, (Prune(0.4, "magnitude", "3:5"),), calib, progress=False)


@pytest.mark.parametrize("policy", ["requantize", "keep", "forbid"])
def test_offgrid_policy_after_quantization(tiny, calib, policy):
    st = BridgeSettings(offgrid=policy)
    pipe = (Quantize(3, symmetric=False), Prune(0.5, "sparsegpt"))
    if policy == "forbid":
        with pytest.raises(PihError, match="offgrid"):
            apply_pipeline(tiny, pipe, calib, st, progress=False)
        return
    state = apply_pipeline(tiny, pipe, calib, st, progress=False)
    w = _weights(tiny)
    on = [bool(torch.all(state.grids[n].on_grid(w[n]))) for n in w]
    entry = state.log[-1]
    assert entry["offgrid_policy"] == policy and entry["offgrid_fraction"] > 0.5
    assert all(on) if policy == "requantize" else not all(on)
    for n in w:
        assert torch.all(w[n][state.masks[n]] == 0)


def test_block_removal_and_mild_quantization_commute(tiny, calib, evalw):
    """RemoveBlocks with RTN: when both orders remove the same blocks the models are identical (A = 0)."""
    base = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    p, q = RemoveBlocks(0.25), Quantize(8)
    s_pq = apply_pipeline(tiny, (p, q), calib, progress=False)
    w_pq, ppl_pq = _weights(tiny), perplexity(tiny, evalw)["ppl"]
    assert len(s_pq.removed) == 1 and all(torch.all(s_pq.masks[n]) for n in layer_names(tiny)
                                          if n.startswith(f"{tiny.blocks_path()}.{s_pq.removed[0]}."))
    from pih.bridge.blocks import set_removed

    tiny.model.load_state_dict(base)
    set_removed(tiny, [])
    s_qp = apply_pipeline(tiny, (q, p), calib, progress=False)
    ppl_qp = perplexity(tiny, evalw)["ppl"]
    if s_qp.removed == s_pq.removed:
        w_qp = _weights(tiny)
        for i in s_pq.removed:
            for n in w_qp:
                if n.startswith(f"{tiny.blocks_path()}.{i}."):
                    w_qp[n] = w_pq[n]
        assert all(torch.equal(w_pq[n], w_qp[n]) for n in w_pq if not any(
            n.startswith(f"{tiny.blocks_path()}.{i}.") for i in s_pq.removed))
        assert ppl_pq == ppl_qp


def test_block_removal_from_cached_inputs_matches_full_forward_passes(tiny, calib):
    """The greedy search scores each candidate from the cached input of its block (only the later blocks run): the
    same losses as full forward passes of the model without it, so the same blocks are removed."""
    from pih.bridge.blocks import set_removed
    from pih.bridge.engine import CompressionState, apply_stage
    from pih.bridge.evaluate import calib_loss

    n = len(tiny.blocks())
    removed, losses = [], []
    for _ in range(2):  # the brute-force reference: one full forward pass per candidate
        cand = {i: (set_removed(tiny, removed + [i]), calib_loss(tiny, calib, 8))[1] for i in range(n)
                if i not in removed}
        best = min(cand, key=cand.get)
        removed.append(best)
        losses.append(cand[best])
    set_removed(tiny, [])
    state = CompressionState()
    apply_stage(tiny, RemoveBlocks(0.5), state, calib, BridgeSettings(), progress=False)
    assert state.removed == removed
    assert state.log[-1]["calib_losses"] == pytest.approx(losses, rel=1e-6)


def test_removed_block_passes_input_through(tiny, calib):
    from pih.bridge.blocks import run_block, set_removed

    inps = capture_block_inputs(tiny, calib, 4)
    set_removed(tiny, [0])
    out = run_block(tiny.blocks()[0], inps)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(inps, out, strict=True))
    set_removed(tiny, [])
    assert "forward" not in tiny.blocks()[0].__dict__


def test_sequential_calibration_sees_compressed_inputs(tiny, calib):
    """Block 1's calibration inputs are the outputs of the already-compressed block 0."""
    from pih.bridge.blocks import run_block, stats_and_outputs

    inps = capture_block_inputs(tiny, calib, 8)
    blk0, blk1 = tiny.blocks()[0], tiny.blocks()[1]
    dense_h = collect_stats(blk1, run_block(blk0, inps), True)
    seen = {}
    orig = stats_and_outputs

    import pih.bridge.blocks as blocks

    def spy(block, inps_, hessian, only=None, collector=None, **kw):
        st, outs = orig(block, inps_, hessian, only, collector, **kw)
        seen[id(block)] = st
        return st, outs

    blocks.stats_and_outputs = spy
    try:
        apply_pipeline(tiny, (Prune(0.6, "sparsegpt"),), calib, progress=False)
    finally:
        blocks.stats_and_outputs = orig
    got = seen[id(blk1)]
    name = next(iter(linears_of(blk1)))
    assert not torch.allclose(got[name].H, dense_h[name].H)  # block 0 was pruned before block 1 was calibrated


def test_determinism(tiny_folder, cache, calib, tiny_source):
    from pih.bridge.models import load_model

    outs = []
    for _ in range(2):
        lm = load_model(tiny_source, cache=cache)
        apply_pipeline(lm, (Prune(0.5, "wanda"), Quantize(3, update="gptq")), calib, seed=7, progress=False)
        outs.append(_weights(lm))
    assert all(torch.equal(outs[0][n], outs[1][n]) for n in outs[0])


def test_a_blocks_layers_compressed_side_by_side_are_those_compressed_in_turn(tiny_folder, cache, calib,
                                                                              tiny_source):
    """With 2 threads the layers of a block are compressed by 2 workers of one thread each (largest first): the
    weights, masks and grids are bitwise those of one thread compressing them in turn, each layer's result lands
    on its own layer, and the run's thread count is back afterwards."""
    import threading

    import pih.bridge.engine as engine
    from pih.bridge.models import load_model

    pipeline = (Prune(0.5, "sparsegpt"), Quantize(3, update="gptq"), Prune(0.6, "wanda"))
    where: set[str] = set()
    plain = engine.compress_matrix

    def spy(*a, **k):
        where.add(threading.current_thread().name.split("_")[0])
        return plain(*a, **k)

    outs = {}
    engine.compress_matrix = spy
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            where.clear()
            lm = load_model(tiny_source, cache=cache)
            st = apply_pipeline(lm, pipeline, calib, seed=3, progress=False)
            assert torch.get_num_threads() == threads
            outs[threads] = (_weights(lm), st.masks, {n: g.scale for n, g in st.grids.items()}, set(where))
    finally:
        engine.compress_matrix = plain
        torch.set_num_threads(before)
    assert outs[1][3] == {"MainThread"} and outs[2][3] == {"pih-layer"}
    for a, b in zip(outs[1][:3], outs[2][:3], strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_export_npz_for_sim(tiny, calib, tmp_path):
    import numpy as np

    from pih.bridge.export import export_layers

    names = layer_names(tiny)[:2]
    p = export_layers(tiny, calib, tmp_path / "x.npz", layers=names, max_tokens=100)
    z = np.load(p)
    w, x = z[f"W::{names[0]}"], z[f"X::{names[0]}"]
    assert w.dtype == np.float32 and x.shape == (100, w.shape[1])
    with pytest.raises(PihError, match="layers"):
        export_layers(tiny, calib, tmp_path / "y.npz", layers=["nope"])


@pytest.mark.gpu
def test_cuda_gives_the_cpu_results(tiny_folder, cache, calib, evalw, tiny_source):
    """The same pipeline on CUDA (TF32 off) and on the CPU: same masks' sparsity and perplexity within 0.5 %."""
    from pih.bridge.models import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    out = {}
    for dev in ("cpu", "cuda"):
        lm = load_model(tiny_source, dev, cache=cache)
        state = apply_pipeline(lm, (Prune(0.5, "sparsegpt"), Quantize(4, symmetric=False, update="gptq")), calib,
                               progress=False)
        out[dev] = (perplexity(lm, evalw)["ppl"], sum(int(m.sum()) for m in state.masks.values()))
    assert out["cuda"][1] == pytest.approx(out["cpu"][1], rel=1e-3)
    assert out["cuda"][0] == pytest.approx(out["cpu"][0], rel=5e-3)
