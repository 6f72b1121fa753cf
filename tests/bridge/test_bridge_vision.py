"""Real-shaped image classifiers: RGB 224-pixel DeiT/ViT/ResNet folders with their own image processor, evaluated on a
class-per-subfolder image folder, an .npz, digits or Fashion-MNIST converted to what the model expects; classes
mapped to the model's labels or a clear error; no code from a processor config ever runs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from _tiny import add_auto_map, make_vit_folder

from pih import PihError, Store

CLASSES = ("tench", "goldfish", "great white shark")
ID2LABEL = {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 2: "great_white_shark", 3: "tiger shark",
            4: "hammerhead"}


def _image_folder(root, classes=CLASSES, n=4, seed=0, splits=False):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sp in (("train", "val") if splits else ("",)):
        for k, c in enumerate(classes):
            d = root / sp / c
            d.mkdir(parents=True)
            for i in range(n):
                h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))  # sizes differ: the processor fits them
                a = (rng.random((h, w, 3)) * 80 + 60 * k).astype(np.uint8)
                Image.fromarray(a).save(d / f"img{i}.png")
    return root


def _raw(model, data, **extra):
    return {"experiment": {"name": "v", "model": str(model), "threads": 1, **extra},
            "data": {"eval": str(data), "calibration": str(data), "calibration_size": 4},
            "prune": {"criterion": "wanda", "ratios": [0.5]}, "quantize": {"bits": [4]}, "grid": {"orders": ["dense",
                                                                                                         "alone"]}}


def test_rgb224_deit_on_an_image_folder_with_its_processor(tmp_path):
    """main: an image folder is not a known data set, and the folder's image processor was never used."""
    from pih.bridge.experiment import parse_config, run_experiment
    from pih.bridge.models import load_model

    model = make_vit_folder(tmp_path / "deit", "deit", id2label=ID2LABEL, num_labels=5)
    data = _image_folder(tmp_path / "imgs")
    lm = load_model(str(model))
    assert lm.processor is not None
    calls = []
    orig = type(lm.processor).__call__

    def spy(self, *a, **kw):
        calls.append(len(kw.get("images", a[0] if a else [])))
        return orig(self, *a, **kw)

    type(lm.processor).__call__ = spy
    try:
        out = run_experiment(parse_config(_raw(model, data)), tmp_path / "s", progress=False)
    finally:
        type(lm.processor).__call__ = orig
    assert calls and sum(calls) >= 12  # the processor made every evaluation and calibration batch
    rec = Store(tmp_path / "s").records()[0]
    s = rec.provenance.settings
    assert "DeiTImageProcessor" in s["preprocessing"] and s["label_mapping"].startswith("by name")
    assert s["eval_images"] == 12 and s["eval_split"] == "all" and s["calibration_overlaps_eval"]
    assert rec.provenance.data.startswith("images:") and all(0 <= p["accuracy"] <= 1 for p in out["points"])


def test_processor_output_is_what_the_model_gets(tmp_path):
    from transformers import AutoImageProcessor

    from pih.bridge.data import image_data
    from pih.bridge.models import load_model

    model = make_vit_folder(tmp_path / "vit", "vit", id2label=ID2LABEL, num_labels=5)
    data = _image_folder(tmp_path / "imgs", splits=True)
    lm = load_model(str(model))
    d = image_data(lm, str(data), str(data), 3, 0)
    proc = AutoImageProcessor.from_pretrained(str(model), trust_remote_code=False)
    from PIL import Image

    files = d.eval_x.split.items[:2]
    ref = proc(images=[np.asarray(Image.open(f).convert("RGB")) for f in files], return_tensors="pt").pixel_values
    got = d.eval_x[0:2]
    assert got.shape == (2, 3, 224, 224) and torch.allclose(got, ref, atol=1e-6)
    assert d.data.endswith(":test") and d.calibration.endswith(":train:random-images")
    assert d.eval_y.tolist() == [1] * 4 + [2] * 4 + [0] * 4  # goldfish, great white shark, tench (sorted)


def test_digits_converted_for_an_rgb_224_model(tmp_path):
    """main: "Expected 3 channels but got 1" (an RGB model fed 1-channel 8x8 digits)."""
    from pih.bridge.experiment import parse_config, run_experiment

    model = make_vit_folder(tmp_path / "deit", "deit", processor=False)  # 10 unnamed labels, no processor
    out = run_experiment(parse_config(_raw(model, "digits")), tmp_path / "s", progress=False)
    rec = Store(tmp_path / "s").records()[0]
    assert "3 channel(s), resized (bilinear) to 224x224" in rec.provenance.settings["preprocessing"]
    assert rec.provenance.settings["label_mapping"].startswith("by index") and len(out["points"]) == 3


def test_a_1000_label_model_on_digits_is_an_error_not_accuracy_0(tmp_path):
    """main: a 1000-label model evaluated on 10-class digits silently reported accuracy 0."""
    from pih.bridge.experiment import parse_config, run_experiment

    model = make_vit_folder(tmp_path / "deit", "deit", image_size=8, patch_size=2, channels=1, num_labels=1000,
                            processor=False)
    with pytest.raises(PihError, match=r"10 classes \(0, 1, 2, 3, \.\.\.\) cannot be mapped to the model's 1000 "):
        run_experiment(parse_config(_raw(model, "digits")), tmp_path / "s", progress=False)


def test_label_map_by_name_synonyms_index_and_errors():
    from types import SimpleNamespace

    from pih.bridge.data import FASHION_MNIST_CLASSES, label_map

    cfg = SimpleNamespace(id2label=ID2LABEL, num_labels=5)
    ids, how = label_map(cfg, ("Great-White_Shark", "tench", "hammerhead"), "x")
    assert ids.tolist() == [2, 0, 4] and how.startswith("by name")
    with pytest.raises(PihError, match="name no label.*'carp'"):
        label_map(cfg, ("tench", "carp"), "x")
    fashion = SimpleNamespace(id2label=dict(enumerate(reversed(FASHION_MNIST_CLASSES))), num_labels=10)
    assert label_map(fashion, FASHION_MNIST_CLASSES, "fashion-mnist")[0].tolist() == list(range(9, -1, -1))
    unnamed = SimpleNamespace(id2label={k: f"LABEL_{k}" for k in range(3)}, num_labels=3)
    assert label_map(unnamed, ("a", "b", "c"), "x")[0].tolist() == [0, 1, 2]
    with pytest.raises(PihError, match="cannot be mapped"):
        label_map(unnamed, ("a", "b"), "x")


def test_npz_images_and_their_errors(tmp_path):
    from pih.bridge.data import image_data, load_image_source
    from pih.bridge.models import load_model

    rng = np.random.default_rng(0)
    f = tmp_path / "ims.npz"
    np.savez(f, images=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), labels=np.arange(10) % 3,
             classes=np.array(list(CLASSES)))
    src = load_image_source(str(f))
    assert src.classes == CLASSES and src.split("all").items.shape == (10, 3, 32, 32)
    lm = load_model(str(make_vit_folder(tmp_path / "deit", "deit", id2label=ID2LABEL, num_labels=5)))
    d = image_data(lm, str(f), str(f), 4, 0)
    assert d.eval_x[0:3].shape == (3, 3, 224, 224) and d.calib.shape == (4, 3, 224, 224)
    with pytest.raises(PihError, match="data.calibration_size=11: the all split of npz:.* has 10 images"):
        image_data(lm, str(f), str(f), 11, 0)
    np.savez(f, images=rng.random((4, 8, 8)) * 3, labels=np.zeros(4, dtype=int))
    with pytest.raises(PihError, match=r"float images must lie in \[0, 1\]"):
        load_image_source(str(f))
    np.savez(f, pictures=np.zeros((4, 8, 8)))
    with pytest.raises(PihError, match="x_train, y_train, x_test, y_test or images, labels"):
        load_image_source(str(f))
    with pytest.raises(PihError, match="is a text corpus"):
        load_image_source("kjv")


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir()
                    and not __import__("os").environ.get("PIH_FASHION_MNIST"), reason="Fashion-MNIST not installed")
def test_fashion_mnist_converted_for_an_rgb_model_with_named_labels(tmp_path):
    from pih.bridge.data import FASHION_MNIST_CLASSES, image_data
    from pih.bridge.models import load_model

    model = make_vit_folder(tmp_path / "vit", "vit", id2label=dict(enumerate(FASHION_MNIST_CLASSES)))
    d = image_data(load_model(str(model)), "fashion-mnist", "fashion-mnist", 4, 0)
    assert d.eval_x[0:2].shape == (2, 3, 224, 224) and d.settings["label_mapping"].startswith("by name")
    assert len(d.eval_y) == 10000


def test_resnet_rgb_224_with_processor(tmp_path):
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    from pih.bridge.experiment import parse_config, run_experiment

    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=3, id2label={k: c for k, c in enumerate(CLASSES)},
                       label2id={c: k for k, c in enumerate(CLASSES)})
    torch.manual_seed(0)
    folder = tmp_path / "resnet"
    ResNetForImageClassification(cfg).save_pretrained(str(folder))
    ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(str(folder))
    data = _image_folder(tmp_path / "imgs")
    run_experiment(parse_config(_raw(folder, data)), tmp_path / "s", progress=False)
    rec = Store(tmp_path / "s").records()[0]
    assert "ConvNextImageProcessor" in rec.provenance.settings["preprocessing"]


def test_no_code_from_a_processor_config_runs_even_when_answering_yes(tmp_path):
    """main: AutoImageProcessor was called without trust_remote_code=False."""
    model = make_vit_folder(tmp_path / "deit", "deit", id2label=ID2LABEL, num_labels=5)
    marker = tmp_path / "MARKER"
    add_auto_map(model, "preprocessor_config.json", "AutoImageProcessor", marker)
    pc = json.loads((model / "preprocessor_config.json").read_text())
    pc["image_processor_type"] = "EvilImageProcessor"
    (model / "preprocessor_config.json").write_text(json.dumps(pc))
    data = _image_folder(tmp_path / "imgs")
    cfg = tmp_path / "c.toml"
    raw = _raw(model, data)
    cfg.write_text("".join(f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())
                           for sec, body in raw.items()))
    r = subprocess.run([sys.executable, "-m", "pih.cli", "run", str(cfg), "--out", str(tmp_path / "s"),
                        "--no-progress", "--format", "json"], capture_output=True, text=True, input="y\ny\ny\n")
    assert not marker.exists(), "code from the model folder ran"
    assert r.returncode == 2 and r.stdout == "" and "never runs a model folder's code" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_pih_run_cli_on_an_rgb224_deit_and_an_image_folder(tmp_path):
    model = make_vit_folder(tmp_path / "deit", "deit", id2label=ID2LABEL, num_labels=5)
    data = _image_folder(tmp_path / "imgs", splits=True)
    cfg = tmp_path / "c.toml"
    raw = _raw(model, data)
    cfg.write_text("".join(f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in body.items())
                           for sec, body in raw.items()))
    r = subprocess.run([sys.executable, "-m", "pih.cli", "run", str(cfg), "--out", str(tmp_path / "s"),
                        "--no-progress", "--format", "json"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["metric"] == "accuracy" and len(out["points"]) == 3
    assert out["provenance"]["data"].startswith("images:") and out["provenance"]["data"].endswith(":test")
    assert out["provenance"]["settings"]["eval_images"] == 12
