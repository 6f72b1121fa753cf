"""Export of compressed models (`pih run --save`, `pih.bridge.save`): a Hugging Face folder that reloads with the
same logits and perplexity (removed blocks really removed), the compressed-tensors format where the scheme fits,
masks and grids recorded."""

import json
import subprocess
import sys

import pytest
import torch
from _tiny import make_lm_folder, make_vit_folder

from pih import Store


def _ppl(folder, windows):
    from pih.bridge.evaluate import perplexity
    from pih.bridge.models import load_model

    return perplexity(load_model(str(folder)), windows)["ppl"]


@pytest.fixture
def lm_run(tmp_path, corpus_name):
    from pih.bridge.experiment import parse_config, run_experiment

    model = make_lm_folder(tmp_path / "m", "qwen2", num_hidden_layers=4)
    raw = {"experiment": {"name": "save", "model": str(model), "threads": 1},
           "data": {"eval": corpus_name, "calibration": corpus_name, "seqlen": 32, "eval_tokens": 512,
                    "calibration_size": 4},
           "prune": {"criterion": "wanda", "ratios": [0.5]},
           "quantize": {"bits": [4], "group": 16, "symmetric": False},
           "pipelines": [{"name": "drop+gptq", "stages": [{"kind": "prune", "ratio": 0.5, "criterion": "loss",
                                                            "structure": "block"},
                                                           {"kind": "quantize", "bits": 3, "update": "gptq"}]}]}
    cfg = parse_config(raw)
    out = run_experiment(cfg, tmp_path / "store", progress=False, save=tmp_path / "saved")
    return model, cfg, out, tmp_path


def test_saved_models_reload_with_the_same_perplexity(lm_run):
    """main: no way to save; a hand-made save_pretrained keeps block removal nowhere (the reloaded model is dense)."""
    from pih.bridge.data import text_data
    from pih.bridge.models import load_model

    model, cfg, out, tmp = lm_run
    saved = tmp / "saved"
    index = json.loads((saved / "index.json").read_text())
    assert [m["order"] for m in index] == ["P", "Q", "P->Q", "Q->P", "drop+gptq"]
    lm = load_model(str(model))
    windows = text_data(lm.tokenizer, cfg.eval, cfg.calibration, 32, 512, 4, 0).eval_windows
    dense = next(p["ppl"] for p in out["points"] if p["order"] == "dense")
    for m in index:
        folder = saved / m["folder"]
        man = json.loads((folder / "pih_compression.json").read_text())
        assert man["formats"]["hf"]["reload_max_abs_logit_diff"] < 1e-4
        assert _ppl(folder / "hf", windows) == pytest.approx(m["ppl"], rel=1e-5)
        if m["order"] == "P":
            assert not man["formats"]["compressed-tensors"]["written"]
            assert "sparsity" in man["formats"]["compressed-tensors"]["why_not"]
        else:  # every quantized point fits compressed-tensors: it reloads with the same perplexity
            ct = folder / "compressed-tensors"
            assert man["formats"]["compressed-tensors"]["reload_max_abs_logit_diff"] < 1e-4
            qc = json.loads((ct / "config.json").read_text())["quantization_config"]
            assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
            assert _ppl(ct, windows) == pytest.approx(m["ppl"], rel=1e-5)
        from safetensors.torch import load_file

        t = load_file(str(folder / "pih_compression.safetensors"))
        if m["order"] in ("P", "P->Q", "Q->P"):
            masks = [k for k in t if k.startswith("mask::")]
            assert len(masks) == 28 and all(t[k].float().mean() == pytest.approx(0.5) for k in masks)
        if m["order"] != "P":
            assert any(k.startswith("scale::") for k in t) and any(k.startswith("zero::") for k in t)
    drop = saved / index[-1]["folder"]
    cfgj = json.loads((drop / "hf" / "config.json").read_text())
    man = json.loads((drop / "pih_compression.json").read_text())
    assert len(man["removed_blocks"]) == 2 and cfgj["num_hidden_layers"] == 2 and len(cfgj["layer_types"]) == 2
    assert abs(index[-1]["ppl"] - dense) > 1e-3  # the saved model is the compressed one, not the dense one
    assert Store(tmp / "store").records()


def test_pih_run_save_cli_and_a_rotated_model(tmp_path, corpus_name):
    model = make_lm_folder(tmp_path / "m", "llama")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[experiment]\nname = "cli"\nmodel = "{model}"\nthreads = 1\nrotate = true\n'
                   f'[data]\neval = "{corpus_name}"\ncalibration = "{corpus_name}"\nseqlen = 32\neval_tokens = 256\n'
                   'calibration_size = 4\n[quantize]\nbits = [4]\nsymmetric = true\n')
    r = subprocess.run([sys.executable, "-m", "pih.cli", "run", str(cfg), "--out", str(tmp_path / "s"),
                        "--save", str(tmp_path / "saved"), "--save-only", "Q", "--no-progress", "--format", "json"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    (m,) = out["saved"]["models"]
    man = json.loads((tmp_path / "saved" / m["folder"] / "pih_compression.json").read_text())
    assert man["rotated"] and man["formats"]["hf"]["reload_max_abs_logit_diff"] < 1e-4
    assert man["formats"]["compressed-tensors"]["written"]
    assert json.loads(man["formats"]["compressed-tensors"]["schemes"][0])["symmetric"] is True
    r = subprocess.run([sys.executable, "-m", "pih.cli", "run", str(cfg), "--save-only", "Q"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "--save-only needs --save" in r.stderr


def test_save_a_vision_model_and_the_python_call(tmp_path):
    from pih import Prune
    from pih.bridge.engine import apply_pipeline
    from pih.bridge.models import load_model
    from pih.bridge.save import save_compressed

    folder = make_vit_folder(tmp_path / "deit", "deit", image_size=32, patch_size=8, num_labels=3,
                             id2label={0: "a", 1: "b", 2: "c"})
    lm = load_model(str(folder))
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    from pih.bridge.engine import CompressionState

    lm.calib_labels = torch.tensor([0, 1, 2, 0, 1, 2])
    state = apply_pipeline(lm, (Prune(0.5, criterion="loss", structure="block"), Prune(0.5, criterion="wanda")), x,
                           state=CompressionState(), progress=False)
    man = save_compressed(lm, state, tmp_path / "out", probe=x)
    assert man["formats"]["hf"]["reload_max_abs_logit_diff"] < 1e-5 and man["formats"]["hf"]["blocks"] == 1
    assert json.loads((tmp_path / "out" / "hf" / "config.json").read_text())["num_hidden_layers"] == 1
    assert (tmp_path / "out" / "hf" / "preprocessor_config.json").is_file()
    assert not man["formats"]["compressed-tensors"]["written"]
