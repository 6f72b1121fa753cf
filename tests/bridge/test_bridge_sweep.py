"""The compiled OBS sweep against the Python loop (bitwise), the reference selection convention, the Hessian
precision setting, and the statistics shared by layers fed the same input."""

import importlib
import itertools
import os
import sys

import numpy as np
import pytest
import torch

from pih.bridge import sweep
from pih.bridge.blocks import _Stats, stats_and_outputs
from pih.bridge.engine import BridgeSettings
from pih.bridge.models import linears_of
from pih.bridge.prune import magnitude, reference_mask, sparsegpt, wanda
from pih.bridge.quant import gptq, prepare_hessian
from pih.errors import PihError


def _case(rows=24, cols=48, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g) + 2 * torch.randn(n, 1, generator=g)
    W = torch.randn(rows, cols, generator=g)
    return W, 2 * X.T @ X / n


def test_the_compiled_sweep_is_available():
    """TorchScript compiles the block loop here (otherwise every kernel silently runs the Python loop)."""
    assert sweep.use_compiled(True)
    assert not sweep.use_compiled(False)


@pytest.mark.parametrize("rows,cols", [(24, 48), (1, 32), (17, 64)])
def test_compiled_gptq_is_bitwise_the_python_loop(rows, cols):
    W, H = _case(rows, cols)
    mask = torch.rand(rows, cols, generator=torch.Generator().manual_seed(1)) < 0.3
    for sym, grp, sc, ao, bs, m, hd in itertools.product([True, False], ["channel", "tensor", 16], ["absmax", "mse"],
                                                         [False, True], [24, 32], [None, mask],
                                                         ["float32", "float64"]):
        if sc == "mse" and hd == "float64":
            continue
        a, ga = gptq(W, H, 3, grp, sym, sc, ao, bs, mask=m, hessian_dtype=hd, compiled=True)
        b, gb = gptq(W, H, 3, grp, sym, sc, ao, bs, mask=m, hessian_dtype=hd, compiled=False)
        where = (sym, grp, sc, ao, bs, m is not None, hd)
        assert torch.equal(a, b), where
        assert torch.equal(ga.scale, gb.scale) and torch.equal(ga.zero, gb.zero), where
        assert torch.equal(ga.g_idx, gb.g_idx), where


@pytest.mark.parametrize("rows", [1, 24])
def test_compiled_sparsegpt_is_bitwise_the_python_loop(rows):
    """Unstructured and N:M, both selections, an existing mask, exact zeros (ties: the random keys decide, drawn in
    the same order) and a NaN weight (the two-sort path)."""
    W, H = _case(rows, 48)
    g = torch.Generator().manual_seed(2)
    ties = W.clone()
    ties[torch.rand(W.shape, generator=g) < 0.6] = 0
    nan = ties.clone()
    nan[0, 5] = float("nan")
    existing = torch.rand(W.shape, generator=g) < 0.25
    for w, nm, sel, ex, bs in itertools.product([W, ties, nan], [None, (2, 4), (1, 4), (3, 4)], ["exact", "reference"],
                                                [None, existing], [16, 32]):
        a, ma = sparsegpt(w, H, 0.5, nm, bs, existing=ex, gen=torch.Generator().manual_seed(3), selection=sel,
                          compiled=True)
        b, mb = sparsegpt(w, H, 0.5, nm, bs, existing=ex, gen=torch.Generator().manual_seed(3), selection=sel,
                          compiled=False)
        where = (nm, sel, ex is not None, bs, bool(torch.isnan(w).any()))
        assert torch.equal(ma, mb), where
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)), where
        if ex is not None:
            assert bool(ma[ex].all()), where


def test_sparsegpt_nm_blocksize_must_hold_whole_groups():
    W, H = _case(8, 48)
    with pytest.raises(PihError, match="blocksize"):
        sparsegpt(W, H, 0.5, (2, 4), blocksize=18)


def test_reference_selection_takes_k_plus_one_per_block():
    """SparseGPT's reference convention: every w²/d² <= the sorted value at position k, so k + 1 weights per block
    without ties (and the mask is that definition on the block's scores); the exact convention takes k."""
    W, H = _case(16, 64)
    bs = 32
    _, m_ref = sparsegpt(W, H, 0.5, blocksize=bs, selection="reference")
    _, m_exact = sparsegpt(W, H, 0.5, blocksize=bs, gen=torch.Generator().manual_seed(0))
    k = int(16 * bs * 0.5)
    for i1 in range(0, 64, bs):
        assert int(m_ref[:, i1 : i1 + bs].sum()) == k + 1
        assert int(m_exact[:, i1 : i1 + bs].sum()) == k
    # the first block's mask from its definition (the block's scores before any update)
    Hinv, _ = prepare_hessian(H, W.clone(), 0.01)
    score = W[:, :bs] ** 2 / torch.diag(Hinv)[None, :bs] ** 2
    assert torch.equal(m_ref[:, :bs], score <= torch.sort(score.reshape(-1))[0][k])


def test_reference_selection_rules_of_magnitude_and_wanda():
    """Magnitude (reference): every |w| <= the sorted value at position k (k + 1 weights); Wanda (reference): the
    first k of a stable sort per row, so ties go to the lowest indices; N:M: topk per group."""
    g = np.random.default_rng(0)
    W = torch.from_numpy(g.standard_normal((8, 32))).float()
    assert int(magnitude(W, 0.5, selection="reference").sum()) == 8 * 16 + 1
    assert int(magnitude(W, 0.5, selection="exact").sum()) == 8 * 16
    flat = torch.ones(4, 8)
    m = wanda(flat, torch.ones(8), 0.5, selection="reference")
    assert bool(m[:, :4].all()) and not bool(m[:, 4:].any())
    m = wanda(flat, torch.ones(8), 0.5, gen=torch.Generator().manual_seed(0))
    assert int(m.sum()) == 16 and not bool(m[:, :4].all())  # random ties: not simply the first four of every row
    nm = magnitude(W, 0.5, (2, 4), selection="reference")
    assert torch.equal(nm.reshape(8, 8, 4).sum(-1), torch.full((8, 8), 2))
    assert torch.equal(nm, reference_mask(W.abs().reshape(8, 8, 4), 2, "topk").reshape(8, 32))
    with pytest.raises(PihError, match="selection"):
        magnitude(W, 0.5, selection="ref")


def test_hessian_dtype_setting_is_validated_and_changes_the_inverse():
    W, H = _case(8, 48)
    a, _ = prepare_hessian(H, W.clone(), 0.01, "float32")
    b, _ = prepare_hessian(H, W.clone(), 0.01, "float64")
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    with pytest.raises(PihError, match="hessian_dtype"):
        prepare_hessian(H, W.clone(), 0.01, "float16")
    with pytest.raises(PihError, match="hessian_dtype"):
        BridgeSettings(hessian_dtype="double")
    with pytest.raises(PihError, match="selection"):
        BridgeSettings(selection="k+1")
    assert BridgeSettings().to_dict()["hessian_dtype"] == "float32"


def _separate_stats(block, inps, hessian):
    """Each layer's statistics from its own input, without any sharing (the definition)."""
    lins = linears_of(block)
    st = {n: _Stats(m.weight.shape[1], "cpu", hessian) for n, m in lins.items()}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: st[n].add(a[0], mod)) for n, m in lins.items()]
    try:
        with torch.no_grad():
            for hs, kw in inps:
                block(hs, **kw)
    finally:
        for h in hooks:
            h.remove()
    return st


def test_layers_fed_the_same_input_share_one_hessian(tiny, calib):
    """q/k/v and gate/up: one statistics object each, bitwise equal to the per-layer statistics; o_proj and
    down_proj (other inputs) have their own; the outputs are those of the block."""
    from pih.bridge.blocks import capture_block_inputs, run_block

    inps = capture_block_inputs(tiny, calib, 4)
    block = tiny.blocks()[0]
    stats, outs = stats_and_outputs(block, inps, hessian=True)
    ref = _separate_stats(block, inps, True)
    assert stats["self_attn.q_proj"] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.gate_proj"] is stats["mlp.up_proj"]
    assert stats["self_attn.o_proj"] is not stats["self_attn.q_proj"]
    assert stats["mlp.down_proj"] is not stats["mlp.gate_proj"]
    assert len({id(s) for s in stats.values()}) == 4
    for n, s in ref.items():
        assert torch.equal(stats[n].H, s.H) and torch.equal(stats[n].norm2, s.norm2) and stats[n].n == s.n, n
    for (a, _), (b, _) in zip(outs, run_block(block, inps), strict=True):
        assert torch.equal(a, b)
    only = stats_and_outputs(block, inps, hessian=False, only={"self_attn.k_proj", "mlp.down_proj"})[0]
    assert set(only) == {"self_attn.k_proj", "mlp.down_proj"}
    assert torch.equal(only["self_attn.k_proj"].norm2, ref["self_attn.k_proj"].norm2)


@pytest.mark.parametrize("cols", [64, 576, 1000, 1536])
def test_the_banded_gram_product_is_bitwise_the_full_one(cols):
    """add_gram (upper row bands, mirrored) against the definition H + xᵀx, bitwise, on inputs of the widths
    SmolLM2's layers take and on ragged bands; the result stays exactly symmetric."""
    from pih.bridge.blocks import add_gram

    g = torch.Generator().manual_seed(cols)
    x = torch.randn(300, cols, generator=g) + 3 * torch.randn(300, 1, generator=g)
    H0 = torch.randn(cols, cols, generator=g)
    H0 = H0 + H0.T
    want = H0 + x.T @ x
    for bands in (1, 2, 3, 4, 7):
        H = H0.clone()
        add_gram(H, x, bands)
        assert torch.equal(H, want), bands
        assert torch.equal(H, H.T), bands


def _counting(block, names):
    calls = {n: 0 for n in names}
    lins = linears_of(block)
    return calls, [lins[n].register_forward_hook(lambda m, a, o, n=n: calls.__setitem__(n, calls[n] + 1))
                   for n in names]


def test_statistics_without_outputs_stop_each_pass_early_and_are_those_of_full_passes(tiny, calib):
    """outputs=False: the same statistics, bitwise, as with the outputs; down_proj (the last layer, whose output
    nothing needs) runs only in the first pass of the first block of its class, which shows every layer runs
    once per pass; a later block of that class stops early in every pass."""
    from pih.bridge.blocks import capture_block_inputs

    inps = capture_block_inputs(tiny, calib, 2)
    assert len(inps) >= 2
    b0, b1 = tiny.blocks()[0], tiny.blocks()[1]
    want0 = stats_and_outputs(b0, inps, hessian=True)[0]
    want1 = stats_and_outputs(b1, inps, hessian=True)[0]
    known: dict = {}
    for block, want, down_calls in ((b0, want0, 1), (b1, want1, 0)):
        calls, hooks = _counting(block, ["mlp.down_proj", "mlp.up_proj"])
        try:
            got, outs = stats_and_outputs(block, inps, hessian=True, outputs=False, single_calls=known)
        finally:
            for h in hooks:
                h.remove()
        assert outs is None
        assert calls == {"mlp.down_proj": down_calls, "mlp.up_proj": len(inps)}
        for n, s in want.items():
            assert torch.equal(got[n].H, s.H) and torch.equal(got[n].norm2, s.norm2) and got[n].n == s.n, n
    assert list(known.values()) == [True]


def test_a_layer_run_twice_in_a_pass_keeps_the_passes_whole(tiny, calib):
    """A block that calls one of its layers twice per pass (weights shared within the block): stopping after the
    first call would drop the second input from its statistics, so every pass runs whole and the statistics are
    those with the outputs."""
    from pih.bridge.blocks import capture_block_inputs

    inps = capture_block_inputs(tiny, calib, 2)
    block = tiny.blocks()[0]
    mlp = block.mlp
    plain = type(mlp).forward

    def twice(self, x):
        y = plain(self, x)
        return y + self.down_proj(torch.tanh(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))

    mlp.forward = twice.__get__(mlp)
    try:
        want = stats_and_outputs(block, inps, hessian=True)[0]
        known: dict = {}
        got, _ = stats_and_outputs(block, inps, hessian=True, outputs=False, single_calls=known)
        again, _ = stats_and_outputs(block, inps, hessian=True, outputs=False, single_calls=known)
    finally:
        del mlp.forward
    assert list(known.values()) == [False]
    for res in (got, again):
        for n, s in want.items():
            assert torch.equal(res[n].H, s.H) and res[n].n == s.n, n


# -- against the reference implementations themselves (their checkouts, outside the repository) -----------------
REFS = os.environ.get("PIH_REFS")


def _ref_module(repo: str, name: str):
    path = os.path.join(REFS, repo)
    if not os.path.isdir(path):
        pytest.skip(f"no checkout of {repo} under $PIH_REFS={REFS}")
    sys.path.insert(0, path)
    try:
        for m in ("quant", name):
            sys.modules.pop(m, None)
        return importlib.import_module(name), importlib.import_module("quant")
    finally:
        sys.path.remove(path)


@pytest.mark.skipif(not REFS, reason="set PIH_REFS to a folder holding checkouts of IST-DASLab's gptq and sparsegpt")
def test_kernels_bitwise_equal_to_the_reference_code(monkeypatch, capsys):
    """GPTQ (float32 H⁻¹) and SparseGPT (selection = reference, unstructured and 2:4) give the reference code's
    weights bit for bit on the same Hessian."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    W, H = _case(96, 128, n=512)
    RG, RQ = _ref_module("gptq", "gptq")
    lin = torch.nn.Linear(128, 96, bias=False)
    lin.weight.data = W.clone()
    q = RG.GPTQ(lin)
    q.H = H.clone()
    q.quantizer = RQ.Quantizer()
    q.quantizer.configure(4, perchannel=True, sym=False)
    q.fasterquant(blocksize=32, percdamp=0.01)
    assert torch.equal(lin.weight.data, gptq(W, H, 4, blocksize=32)[0])
    RS, _ = _ref_module("sparsegpt", "sparsegpt")
    for nm in (None, (2, 4)):
        lin.weight.data = W.clone()
        s = RS.SparseGPT(lin)
        s.H = H.clone()
        s.fasterprune(0.5 if nm is None else 0, 0 if nm is None else 2, 0 if nm is None else 4, 32, 0.01)
        ours, _ = sparsegpt(W, H, 0.5, nm, 32, selection="reference")
        assert torch.equal(lin.weight.data, ours), nm
