"""Every causal-LM family of the adapter table on a tiny random-init folder: block plumbing equals the model's own
forward pass, the chunked loss equals the model's logits, rotation exact or refused, a compression run, and
``pih run`` / ``pih advise`` on folders that main refused (qwen2, mistral)."""

import json

import pytest
import torch
from _tiny import FAMILY_CONFIGS, make_lm_folder, write_qwen2_gguf

from pih import PihError, Prune, Quantize


def _three_blocks(mt):
    over = {"num_hidden_layers": 3}
    if "layer_types" in FAMILY_CONFIGS[mt]:
        over["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    return over


def test_the_table_covers_the_families_asked_for():
    from pih.bridge.families import FAMILIES

    assert set(FAMILY_CONFIGS) == set(FAMILIES)
    assert {"llama", "qwen2", "mistral", "gemma", "gemma2", "gemma3_text", "phi3", "olmo"} <= set(FAMILIES)


@pytest.mark.parametrize("mt", sorted(FAMILY_CONFIGS))
def test_family_plumbing_rotation_and_compression(mt, tmp_path):
    from pih.bridge.blocks import capture_block_inputs, run_block
    from pih.bridge.engine import apply_pipeline
    from pih.bridge.evaluate import perplexity, token_losses
    from pih.bridge.families import FAMILIES
    from pih.bridge.models import load_model
    from pih.bridge.rotate import rotate_model

    folder = make_lm_folder(tmp_path / mt, mt, **_three_blocks(mt))
    lm = load_model(str(folder), dtype="float64")
    assert lm.arch == "llama" and lm.family is FAMILIES[mt] and lm.name.startswith(f"{mt}:{mt}@")
    x = torch.randint(4, 100, (2, 24), generator=torch.Generator().manual_seed(0))  # 24 > sliding window 8
    with torch.no_grad():
        out = lm.model(input_ids=x, output_hidden_states=True)
        # the engine's block-by-block calibration path reproduces the model's own hidden states
        inps = capture_block_inputs(lm, x, 8)
        for i, blk in enumerate(lm.blocks()[:-1]):
            inps = run_block(blk, inps)
            assert float((inps[0][0] - out.hidden_states[i + 1]).abs().max()) < 1e-9, (mt, i)
        # the chunked head (family's soft-cap / scaling) gives the model's own token losses
        ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2).float(), x[:, 1:], reduction="none")
        assert torch.allclose(token_losses(lm, x), ce, atol=1e-5)
    if FAMILIES[mt].rotation_exact:
        assert rotate_model(lm, seed=1) == "hadamard"
        with torch.no_grad():
            rot = lm.model(input_ids=x).logits
        assert float((rot - out.logits).abs().max()) < 1e-5 * float(out.logits.abs().max())
    else:
        with pytest.raises(PihError, match=f"rotation is not exact for {mt}"):
            rotate_model(lm, seed=1)
        with pytest.raises(PihError, match="not exact"):
            apply_pipeline(lm, (Quantize(4, rotation="hadamard"),), x, progress=False)
    # a calibrated pipeline runs and keeps its mask
    lm = load_model(str(folder))
    calib = torch.randint(4, 100, (4, 32), generator=torch.Generator().manual_seed(1))
    state = apply_pipeline(lm, (Prune(0.5, criterion="wanda"), Quantize(4, update="gptq")), calib, progress=False)
    first = f"{lm.block_name(0)}.{next(iter(state.masks)).split('.', 3)[-1]}"
    assert state.masks and first in state.masks
    assert 0 < perplexity(lm, calib)["ppl"] < 10 * 128


def _raw(model, corpus, **data):
    return {"experiment": {"name": "fam", "model": model, "seed": 0, "threads": 1},
            "data": {"eval": corpus, "calibration": corpus, "seqlen": 32, "eval_tokens": 256, "calibration_size": 4,
                     **data},
            "prune": {"criterion": "wanda", "ratios": [0.5]}, "quantize": {"bits": [4]}}


@pytest.mark.parametrize("mt", ["qwen2", "mistral"])
def test_pih_run_on_folders_main_refused(mt, tmp_path, corpus_name):
    """main: "unknown architecture model_type='qwen2'" (and 'mistral')."""
    from pih.bridge.experiment import parse_config, run_experiment

    folder = make_lm_folder(tmp_path / "m", mt)
    out = run_experiment(parse_config(_raw(str(folder), corpus_name)), tmp_path / "store", progress=False)
    assert out["provenance"]["model"].startswith(f"{mt}:m@") and len(out["points"]) == 5
    assert all(p["ppl"] > 1 for p in out["points"])


def test_pih_advise_on_a_qwen2_folder(tmp_path, corpus_name):
    from pih.bridge.advise import AdviseConfig, advise

    folder = make_lm_folder(tmp_path / "q", "qwen2")
    cfg = AdviseConfig(model=str(folder), methods=(Prune(0.5, criterion="wanda"), Quantize(3)), eval=corpus_name,
                       calibration=corpus_name, seqlen=32, calibration_size=4, eval_tokens=64, verify_tokens=64,
                       layer_fraction=1.0, evaluate=False)
    out = advise(cfg, progress=False)
    assert out["recommendation"] and out["provenance"]["model"].startswith("qwen2:q@")


def test_hub_id_resolved_from_the_local_cache(tmp_path, monkeypatch):
    """main: a hub id is refused ("no such file or folder")."""
    from pih.bridge.models import load_model

    folder = make_lm_folder(tmp_path / "src", "qwen2")
    repo = tmp_path / "hub" / "models--someorg--tiny-qwen"
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    lm = load_model("someorg/tiny-qwen")
    assert lm.name.startswith("someorg/tiny-qwen@") and lm.family.model_type == "qwen2"
    assert lm.name.split("@")[1] == load_model(str(folder)).name.split("@")[1]  # identity is the content's
    with pytest.raises(PihError, match="local Hugging Face cache"):
        load_model("someorg/not-there")


def test_folder_without_tokenizer_is_one_line_and_tokenizer_option(tmp_path, corpus_name):
    """main: a raw traceback from the tokenizer loader."""
    import subprocess
    import sys

    from pih.bridge.models import load_model

    bare = make_lm_folder(tmp_path / "bare", "llama", tokenizer=False)
    tok = make_lm_folder(tmp_path / "withtok", "llama")
    with pytest.raises(PihError, match=r"has no tokenizer .*tokenizer = "):
        load_model(str(bare))
    lm = load_model(str(bare), tokenizer=str(tok))
    assert lm.tokenizer("ab").input_ids and any("tokenizer from" in n for n in lm.notes)
    raw = _raw(str(bare), corpus_name)
    cfg = tmp_path / "c.toml"
    cfg.write_text(_toml(raw))
    r = subprocess.run([sys.executable, "-m", "pih.cli", "run", str(cfg), "--out", str(tmp_path / "s"),
                        "--no-progress", "--format", "json"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "has no tokenizer" in r.stderr
    raw["experiment"]["tokenizer"] = str(tok)
    cfg.write_text(_toml(raw))
    r = subprocess.run([sys.executable, "-m", "pih.cli", "run", str(cfg), "--out", str(tmp_path / "s"),
                        "--no-progress", "--format", "json"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["points"]


def _toml(raw: dict) -> str:
    lines = []
    for sec, body in raw.items():
        lines.append(f"[{sec}]")
        for k, v in body.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def test_a_qwen2_gguf_file_with_the_tokenizer_option(tmp_path):
    """main: "unknown GGUF architecture 'qwen2'" (only LLaMA GGUF files were read)."""
    from transformers import AutoModelForCausalLM

    from pih.bridge.models import load_model

    folder = make_lm_folder(tmp_path / "hf", "qwen2", tie_word_embeddings=False)
    ref = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=False)
    write_qwen2_gguf(ref, tmp_path / "m.gguf")
    with pytest.raises(PihError, match="tokenizer = "):  # the file has no tokenizer: the error says what to do
        load_model(str(tmp_path / "m.gguf"))
    lm = load_model(str(tmp_path / "m.gguf"), tokenizer=str(folder))
    assert lm.family.model_type == "qwen2" and lm.name.startswith("gguf:m.gguf@")
    x = torch.randint(4, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lm.model(input_ids=x).logits, ref(input_ids=x).logits)
