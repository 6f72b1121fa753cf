"""Tiny random-init Hugging Face folders for the bridge tests (built with save_pretrained, never downloaded)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

VOCAB = 128
CHARS = list(string.printable[:95]) + ["\n"]  # printable ASCII and newline: one token each

# per-family config overrides on top of COMMON (tiny: hidden 32, 2 blocks)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILY_CONFIGS = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 8},
    "smollm3": {},
    "helium": {"head_dim": 8},
    "granite": {"logits_scaling": 2.0, "residual_multiplier": 0.5, "embedding_multiplier": 3.0,
                "attention_multiplier": 0.3},
    "phi3": {},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "gemma3_text": {"head_dim": 8, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "olmo": {},
    "olmo2": {},
    "olmo3": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
    "stablelm": {},
    "starcoder2": {},
}


def make_tokenizer(folder: Path) -> None:
    """A character-level tokenizer (tokenizer.json + tokenizer_config.json) with ids 0..2 special."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in CHARS:
        vocab[c] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.save_pretrained(str(folder))


def make_lm_folder(folder: Path, model_type: str = "llama", seed: int = 0, tokenizer: bool = True,
                   perturb_norms: bool = True, **over) -> Path:
    """A random-init causal LM of ``model_type`` saved to ``folder`` (its norms perturbed so folding them matters)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    cfg = AutoConfig.for_model(model_type, **{**COMMON, **FAMILY_CONFIGS[model_type], **over})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    if perturb_norms:
        g = torch.Generator().manual_seed(seed + 1)
        for n, p in model.named_parameters():
            if "norm" in n and p.dim() == 1:
                p.data += 0.2 * torch.randn(p.shape, generator=g)
    model.save_pretrained(str(folder))
    if tokenizer:
        make_tokenizer(folder)
    return folder


def make_vit_folder(folder: Path, kind: str = "deit", image_size: int = 224, patch_size: int = 32,
                    num_labels: int = 10, id2label: dict | None = None, processor: bool = True, seed: int = 0,
                    channels: int = 3) -> Path:
    """A random-init RGB DeiT/ViT classifier (hidden 32, 2 blocks) with an ImageNet-style image processor."""
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    folder = Path(folder)
    kw = dict(image_size=image_size, patch_size=patch_size, num_channels=channels, hidden_size=32,
              num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=num_labels)
    if id2label:
        kw["id2label"] = {int(k): v for k, v in id2label.items()}
        kw["label2id"] = {v: int(k) for k, v in id2label.items()}
    torch.manual_seed(seed)
    model = (DeiTForImageClassification(DeiTConfig(**kw)) if kind == "deit"
             else ViTForImageClassification(ViTConfig(**kw)))
    model.save_pretrained(str(folder))
    if processor:
        from transformers import DeiTImageProcessor

        size = int(round(image_size * 256 / 224))
        DeiTImageProcessor(size={"height": size, "width": size}, crop_size={"height": image_size,
                           "width": image_size}).save_pretrained(str(folder))
    return folder


def add_auto_map(folder: Path, file: str, key: str, marker: Path) -> None:
    """Point ``file``'s auto_map at a module of the folder that writes ``marker`` when imported."""
    cfg = json.loads((folder / file).read_text())
    cfg["auto_map"] = {key: ["evil.Evil", None] if key == "AutoTokenizer" else "evil.Evil"}
    (folder / file).write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import PreTrainedTokenizerFast as Evil\n")


_GGUF_BLOCK = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
               "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
               "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
               "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
               "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
               "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def write_qwen2_gguf(model, path: Path) -> None:
    """A float32 GGUF of a Qwen2ForCausalLM (llama.cpp's tensor names; no tokenizer in the file)."""
    from gguf import GGUFWriter

    c = model.config
    w = GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for n, t in model.state_dict().items():
        parts = n.split(".")
        name = top.get(n) or f"blk.{parts[2]}." + _GGUF_BLOCK[".".join(parts[3:])]
        w.add_tensor(name, t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
