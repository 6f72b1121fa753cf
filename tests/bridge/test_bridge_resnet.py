"""ResNet (convolutions as (out, in·kh·kw) matrices on unfolded inputs) and Fashion-MNIST in the torch bridge.

One tiny ResNet is trained per session on scikit-learn's digits (120 steps, through ``pih train``) into the
session cache; Fashion-MNIST tests skip when the Debian package ``dataset-fashion-mnist`` is not installed.
"""

import json

import pytest
import torch
from torch import nn

from pih import PihError, Prune, Quantize

STEPS = 120
SOURCE = f"tiny-resnet:digits:{STEPS}"


@pytest.fixture(scope="session")
def resnet_folder(cache):
    pytest.importorskip("sklearn")
    from pih.cli import main

    assert main(["train", SOURCE, "--cache", cache, "--format", "json"]) == 0
    from pih.bridge.train import tiny_resnet_folder

    return tiny_resnet_folder("digits", 0, cache, STEPS)


@pytest.fixture
def resnet(resnet_folder, cache):
    from pih.bridge.models import load_model

    return load_model(SOURCE, cache=cache)


@pytest.fixture(scope="session")
def digits():
    pytest.importorskip("sklearn")
    from pih.bridge.data import load_images

    return load_images("digits")


def _calib(lm, digits, n=48):
    lm.calib_labels = digits.train_y[:n]
    return digits.train_x[:n]


# -- the 2-D view and the unfolded Hessian ---------------------------------------------------------------------
def test_unfolded_hessian_equals_explicit_patches():
    from pih.bridge.blocks import _Stats
    from pih.bridge.conv import weight_matrix

    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False)
    conv.weight.data = torch.randn(conv.weight.shape, generator=g, dtype=torch.float64).float()
    x = torch.randn(4, 2, 5, 6, generator=g)
    kh, kw = conv.kernel_size
    xp = torch.nn.functional.pad(x, (0, 0, 1, 1))  # padding (1, 0): rows only
    rows = []
    for b in range(x.shape[0]):  # explicit receptive fields, channel-major then kernel row then kernel column
        for i in range(0, xp.shape[2] - (kh - 1) * 1, 2):
            for j in range(0, xp.shape[3] - (kw - 1) * 2, 1):
                rows.append(torch.stack([xp[b, c, i + a, j + 2 * e] for c in range(2) for a in range(kh)
                                         for e in range(kw)]))
    X = torch.stack(rows).double()
    out = conv(x)
    assert X.shape == (x.shape[0] * out.shape[2] * out.shape[3], 2 * kh * kw)
    # the 2-D view times a patch is the conv output at that position
    y = (X @ weight_matrix(conv).double().T).reshape(x.shape[0], out.shape[2], out.shape[3], 3).permute(0, 3, 1, 2)
    assert torch.allclose(y.float(), out, atol=1e-5)
    st = _Stats(2 * kh * kw, "cpu", hessian=True)
    st.add(x[:1], conv)  # two batches: the running average must match one pass over everything
    st.add(x[1:], conv)
    H = 2 / x.shape[0] * X.T @ X  # n counts images, as the reference code's nsamples
    assert st.n == 4
    assert torch.allclose(st.H.double(), H, rtol=1e-5, atol=1e-5)
    assert torch.allclose(st.norm2.double(), (X**2).sum(0) / x.shape[0], rtol=1e-5)


def test_weight_view_round_trip_and_refusals():
    from pih.bridge.conv import matrix_shape, set_weight_matrix, weight_matrix
    from pih.bridge.models import linears_of

    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert matrix_shape(conv) == (6, 36)
    w2 = weight_matrix(conv).clone() * 2
    set_weight_matrix(conv, w2)
    assert torch.equal(conv.weight.data.reshape(6, -1), w2)
    block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(PihError, match="grouped convolution"):
        linears_of(block)
    with pytest.raises(PihError, match="padding_mode"):
        linears_of(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")))


# -- loading -----------------------------------------------------------------------------------------------------
def test_resnet_loads_blocks_and_local_folder(resnet, resnet_folder, tmp_path, digits):
    from pih.bridge.blocks import layer_names
    from pih.bridge.models import load_model

    info = json.loads((resnet_folder / "train_info.json").read_text())
    assert info["input_size"] == 32 and info["config"]["depths"] == [2, 2, 2]
    assert resnet.arch == "resnet" and len(resnet.blocks()) == 6
    assert resnet.block_name(2) == "resnet.encoder.stages.1.layers.0"
    assert [resnet.removable(i) for i in range(6)] == [True, True, False, True, False, True]
    names = layer_names(resnet)
    assert len(names) == 14 and all(n.endswith(".convolution") for n in names)  # stem and classifier stay dense
    assert not any("embedder" in n or "classifier" in n for n in names)
    assert any("BatchNorm" in n for n in resnet.notes)
    # 8x8 digits are upsampled by the model's hook exactly as an explicit nearest upsampling
    x = digits.test_x[:5]
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="nearest")
    with torch.no_grad():
        assert torch.equal(resnet.model(pixel_values=x).logits, resnet.model(pixel_values=up).logits)
    # a plain local Hugging Face folder (no pih_input_size): loads as resnet, same weights
    resnet.model.config.pih_input_size = None
    resnet.model.save_pretrained(str(tmp_path / "r"))
    lm2 = load_model(str(tmp_path / "r"))
    assert lm2.arch == "resnet" and lm2.name.startswith("resnet:r@")
    with torch.no_grad():
        assert torch.allclose(lm2.model(pixel_values=up).logits, resnet.model(pixel_values=up).logits)


def test_resnet_loading_errors(tmp_path, cache):
    from pih.bridge.models import load_model

    with pytest.raises(PihError, match="no such file or folder"):
        load_model(str(tmp_path / "missing-resnet"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
    with pytest.raises(PihError, match="ResNetForImageClassification"):
        load_model(str(tmp_path))
    with pytest.raises(PihError, match="not trained yet"):
        load_model("tiny-resnet:digits:7", cache=cache)
    with pytest.raises(PihError, match="tiny-resnet"):
        load_model("tiny-resnet:digits:x")
    from pih.cli import main

    assert main(["train", "tiny-resnet:digits:5", "--steps", "6", "--cache", cache]) != 0  # conflicting steps
    assert main(["train", "tiny-vgg", "--cache", cache]) != 0


def test_rotation_and_grouped_conv_refused(resnet, digits):
    from pih.bridge.engine import apply_pipeline
    from pih.bridge.rotate import rotate_model

    calib = _calib(resnet, digits)
    before = {k: v.clone() for k, v in resnet.model.state_dict().items()}
    with pytest.raises(PihError, match="rotation"):
        apply_pipeline(resnet, (Prune(0.5), Quantize(4, rotation="hadamard")), calib, progress=False)
    with pytest.raises(PihError, match="LLaMA"):
        rotate_model(resnet)
    blk = resnet.blocks()[1].layer[0]
    blk.convolution = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
    with pytest.raises(PihError, match="groups=4"):
        apply_pipeline(resnet, (Prune(0.5),), calib, progress=False)
    after = resnet.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "stages.0.layers.1.layer.0.convolution" not in k)


# -- compressors on conv layers ---------------------------------------------------------------------------------
def test_conv_masks_survive_later_stages_and_gptq_on_grid(resnet, digits):
    from pih.bridge.conv import matrix_shape, weight_matrix
    from pih.bridge.engine import apply_pipeline, effective_weights
    from pih.bridge.models import linears_of

    calib = _calib(resnet, digits)
    state = apply_pipeline(resnet, (Prune(0.4, criterion="wanda"),), calib, progress=False)
    first = {k: v.clone() for k, v in state.masks.items()}
    assert len(first) == 14
    apply_pipeline(resnet, (Quantize(3, symmetric=False, update="gptq"), Prune(0.6, criterion="sparsegpt")),
                   calib, state=state, progress=False, start_index=1)
    eff = effective_weights(resnet, state)
    for i, blk in enumerate(resnet.blocks()):
        for n, m in linears_of(blk).items():
            full = f"{resnet.block_name(i)}.{n}"
            mask = state.masks[full]
            assert mask.shape == matrix_shape(m) == eff[full].shape
            assert bool((mask | ~first[full]).all())  # every weight pruned by stage 1 is still pruned
            W = weight_matrix(m)
            assert bool((W[mask] == 0).all())
            assert abs(float(mask.float().mean()) - 0.6) < 0.02
            assert bool(state.grids[full].on_grid(W).all())  # requantize: the kept weights are back on the grid


def test_conv_nm_and_rtn_grid(resnet, digits):
    from pih.bridge.conv import weight_matrix
    from pih.bridge.engine import apply_pipeline
    from pih.bridge.models import linears_of

    calib = _calib(resnet, digits)
    state = apply_pipeline(resnet, (Prune(0.5, criterion="sparsegpt", structure="2:4"), Quantize(4, group=16)),
                           calib, progress=False)
    for i, blk in enumerate(resnet.blocks()):
        for n, m in linears_of(blk).items():
            W = weight_matrix(m)
            full = f"{resnet.block_name(i)}.{n}"
            groups = state.masks[full].reshape(W.shape[0], -1, 4)
            assert bool((groups.sum(-1) == 2).all())  # two of every four consecutive columns of the 2-D view
            assert bool((W.reshape(W.shape[0], -1, 4) == 0).sum(-1).ge(2).all())
            grid = state.grids[full]
            assert bool(grid.on_grid(W).all())
            for g in range(W.shape[1] // 16):  # at most 2^4 levels per (row, group of 16 columns)
                assert max(len(torch.unique(r)) for r in W[:, 16 * g : 16 * g + 16]) <= 16
    with pytest.raises(PihError, match="3:5"):
        apply_pipeline(resnet, (Prune(0.4, structure="3:5"),), calib, progress=False)


def test_block_removal_only_shape_preserving_blocks(resnet, digits):
    from pih.bridge.engine import apply_pipeline

    calib = _calib(resnet, digits)
    state = apply_pipeline(resnet, (Prune(0.5, criterion="loss", structure="block"),), calib, progress=False)
    assert len(state.removed) == 3 and all(resnet.removable(i) for i in state.removed)
    with torch.no_grad():
        assert resnet.model(pixel_values=digits.test_x[:4]).logits.shape == (4, 10)
    with pytest.raises(PihError, match="only 4 of 6"):
        apply_pipeline(resnet, (Prune(0.84, criterion="loss", structure="block"),), calib, progress=False)


def test_export_conv_rows_reproduce_outputs(resnet, digits, tmp_path):
    import numpy as np

    from pih.bridge.export import export_layers

    name = "resnet.encoder.stages.1.layers.0.layer.0.convolution"
    path = export_layers(resnet, digits.train_x[:4], tmp_path / "x.npz", layers=[name])
    d = np.load(path)
    W, X = d[f"W::{name}"], d[f"X::{name}"]
    conv = resnet.model.get_submodule(name)
    got = []
    h = conv.register_forward_hook(lambda m, a, o: got.append(o))
    with torch.no_grad():
        resnet.model(pixel_values=digits.train_x[:4])
    h.remove()
    out = got[0]  # (4, 32, 4, 4)
    assert W.shape == (32, 144) and X.shape == (4 * 16, 144)
    y = torch.from_numpy(X @ W.T).reshape(4, 16, 32).permute(0, 2, 1).reshape(out.shape)
    assert torch.allclose(y, out, atol=1e-4)


# -- a grid on real weights ------------------------------------------------------------------------------------
def test_resnet_grid_records_and_analysis(resnet_folder, cache, tmp_path):
    from pih.bridge.experiment import parse_config, run_experiment

    raw = {
        "experiment": {"name": "r", "model": SOURCE, "cache": cache, "threads": 1, "analysis": True},
        "data": {"eval": "digits", "calibration": "digits", "calibration_size": 48},
        "prune": {"criterion": "wanda", "ratios": [0.5]},
        "quantize": {"bits": [3], "symmetric": False, "update": "gptq"},
    }
    out = run_experiment(parse_config(raw), tmp_path / "r", progress=False)
    assert out["metric"] == "accuracy" and [p["order"] for p in out["points"]] == ["dense", "P", "Q", "P->Q", "Q->P"]
    acc = {p["order"]: p["accuracy"] for p in out["points"]}
    assert acc["dense"] > 0.5  # trained, far above chance (0.1)
    assert all(0 <= a <= 1 for a in acc.values())
    sp = {p["order"]: p["sparsity"] for p in out["points"]}
    assert sp["dense"] < 0.01 and abs(sp["P"] - 0.5) < 0.01
    pair = out["pairs"][0]
    assert pair["A_QP"] == pytest.approx(pair["accuracy_Q_first"] - pair["accuracy_P_first"])
    an = pair["analysis"]
    assert an["n_units"] == sum(m.weight.numel() for m in _convs(resnet_folder))
    assert an["t1_identity_gap"] < 1e-9 * max(1.0, abs(an["A_PQ_direct"]))
    assert an["decomposition_gap"] < 1e-6 * max(1.0, abs(an["A_PQ_error_actual"]))
    bad = dict(raw, experiment=dict(raw["experiment"], rotate=True))
    with pytest.raises(PihError, match="LLaMA"):
        run_experiment(parse_config(bad), tmp_path / "r2", progress=False)


def _convs(folder):
    from transformers import ResNetForImageClassification

    m = ResNetForImageClassification.from_pretrained(str(folder), local_files_only=True)
    return [c for s in m.resnet.encoder.stages for c in s.modules() if isinstance(c, nn.Conv2d)]


# -- Fashion-MNIST -----------------------------------------------------------------------------------------------
def test_fashion_mnist_missing_files_say_how_to_install(tmp_path, monkeypatch):
    from pih.bridge.data import load_images

    monkeypatch.setenv("PIH_FASHION_MNIST", str(tmp_path))
    with pytest.raises(PihError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist")
    with pytest.raises(PihError, match="fashion-mnist"):
        load_images("cifar10")


def test_fashion_mnist_loader():
    from pih.bridge.data import fashion_mnist_dir, load_images

    if not (fashion_mnist_dir() / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    ims = load_images("fashion-mnist")
    assert ims.train_x.shape == (60000, 1, 28, 28) and ims.test_x.shape == (10000, 1, 28, 28)
    assert ims.train_x.dtype == torch.float32 and float(ims.train_x.min()) == 0.0 and float(ims.train_x.max()) == 1.0
    assert torch.equal(torch.bincount(ims.test_y), torch.full((10,), 1000))  # the official balanced test split
    assert torch.equal(torch.bincount(ims.train_y), torch.full((10,), 6000))
    assert ims.tag == load_images("fashion-mnist").tag and ims.tag.startswith("fashion-mnist@")
    assert ims.train_y[:5].tolist() == [9, 0, 0, 3, 0]  # the files' own order (no shuffling)


def test_advise_layers_predicts_a_resnet_grid_from_its_calibration_images(resnet, cache, tmp_path, monkeypatch):
    """On an image classifier's grid, advise-layers compresses the sampled convolutions with both orders on the
    records' own calibration images (data, split, size and seed from the provenance); the predictors that need a
    language model's loss or perplexity predict nothing there."""
    import numpy as np

    from pih import Provenance, Record, Store
    from pih.bridge.advise import measure_layerwise, sample_layers
    from pih.bridge.data import image_data
    from pih.bridge.settings import BridgeSettings
    from pih.commands.compare import ADVISE_FRACTION, advise_layers, alone_map_layers, loss_layers
    from pih.compare import measured_grid

    monkeypatch.setenv("PIH_CACHE", cache)
    idata = image_data(resnet, "digits", "digits", 24, 1)
    prov = Provenance(backend="torch", model=resnet.name, data=idata.data, metric="top1", seqlen=None,
                      calibration=idata.calibration, calibration_size=24, seed=1,
                      settings={"bridge": {"offgrid": "requantize"}, **idata.settings})
    p, q = Prune(0.5, criterion="wanda"), Quantize(2, symmetric=False)
    st = Store(tmp_path / "s")
    st.append(Record(prov, (p, q), 0.5, {"prune": 0.5, "quant": 2, "order": "P->Q"}))
    st.append(Record(prov, (q, p), 0.4, {"prune": 0.5, "quant": 2, "order": "Q->P"}))
    g = measured_grid(st.records())
    pred, cost = advise_layers(g, model=SOURCE, seeds=[1])
    assert set(pred) == {(0.5, 2)} and cost > 0
    resnet.calib_labels = idata.calib_labels
    lw = measure_layerwise(resnet, idata.calib, [p, q], [(0, 1), (1, 0)], (), BridgeSettings(offgrid="requantize"),
                           seed=1, progress=False, layers=sample_layers(resnet, ADVISE_FRACTION))
    expected = float(np.sum((lw.errors[(0, 1)] - lw.errors[(1, 0)]) / lw.ref))  # advise's relative errors
    assert pred[(0.5, 2)] == pytest.approx(expected, rel=1e-6) and expected != 0
    assert loss_layers(g, model=SOURCE, seeds=[1])[0] == {} and alone_map_layers(g, model=SOURCE, seeds=[1])[0] == {}
