"""The adapter table of causal language models whose decoder blocks follow the LLaMA layout.

One row per Hugging Face ``model_type``: where the blocks, the final norm, the embedding and the LM head are, which
norm feeds which linear layers and which linear layers write to the residual stream (for the Hadamard rotation of
:mod:`pih.bridge.rotate`), how the norm applies its weight (``x·w`` or Gemma's ``x·(1 + w)``), how the logits follow
from the last hidden state, and whether the residual-stream rotation is exact for the family (and why not when it
is not). Every family's compressible layers are the ``nn.Linear`` modules of its blocks, in forward order.

The table is data; adding a family whose blocks look like LLaMA's is one row (and a tiny random-init test in
``tests/bridge/test_bridge_families.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._common import bad

_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP = ("mlp.gate_proj", "mlp.up_proj")
_WRITERS = ("self_attn.o_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Family:
    """Where things are in one causal-LM family (paths relative to the ``*ForCausalLM`` module / to a block)."""

    model_type: str
    blocks: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    head: str = "lm_head"
    # norm in the block -> the linear layers reading its output (None: the family has no such norm)
    readers: tuple[tuple[str, tuple[str, ...]], ...] = (("input_layernorm", _ATTN), ("post_attention_layernorm", _MLP))
    writers: tuple[str, ...] = _WRITERS  # linear layers whose output is added to the residual stream
    norm_offset: float = 0.0  # the norm multiplies by (offset + weight): Gemma's RMSNorm has offset 1
    logits: str = "head"  # "head": logits = head(h); "softcap": Gemma 2/3's tanh cap; "scaled": Granite's division
    rotation_exact: bool = True
    rotation_why_not: str = ""

    def check_rotation(self) -> None:
        """Refuse the residual-stream rotation where it does not leave the dense model's function unchanged."""
        if not self.rotation_exact:
            raise bad("rotation", "hadamard", f"the residual-stream rotation is not exact for {self.model_type}: "
                      f"{self.rotation_why_not}; run it without rotation")


_POST_NORMS = ("its blocks normalise the attention and MLP outputs (post-norms with a per-channel weight) before "
               "adding them to the residual stream, and such a norm does not commute with a rotation")
_LAYERNORM = ("its LayerNorm subtracts the mean of the residual stream, which a rotation does not preserve")
_PHI3_READERS = (("input_layernorm", ("self_attn.qkv_proj",)), ("post_attention_layernorm", ("mlp.gate_up_proj",)))
_STARCODER_READERS = (("input_layernorm", _ATTN), ("post_attention_layernorm", ("mlp.c_fc",)))

FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama"),
    Family("mistral"),
    Family("qwen2"),
    Family("qwen3"),  # q_norm / k_norm act per head, after the projections: the rotation stays exact
    Family("smollm3"),
    Family("helium"),
    Family("granite", logits="scaled"),  # scalar embedding / residual / attention multipliers commute with Q
    Family("phi3", readers=_PHI3_READERS),
    Family("gemma", norm_offset=1.0),
    Family("gemma2", norm_offset=1.0, logits="softcap", rotation_exact=False, rotation_why_not=_POST_NORMS),
    Family("gemma3_text", norm_offset=1.0, logits="softcap", rotation_exact=False, rotation_why_not=_POST_NORMS),
    Family("olmo", rotation_exact=False, rotation_why_not=_LAYERNORM),
    Family("olmo2", readers=(), rotation_exact=False, rotation_why_not=_POST_NORMS),
    Family("olmo3", readers=(), rotation_exact=False, rotation_why_not=_POST_NORMS),
    Family("stablelm", rotation_exact=False, rotation_why_not=_LAYERNORM),
    Family("starcoder2", readers=_STARCODER_READERS, writers=("self_attn.o_proj", "mlp.c_proj"),
           rotation_exact=False, rotation_why_not=_LAYERNORM),
)}

# GGUF ``general.architecture`` names that differ from the Hugging Face model_type
GGUF_ARCHS = {"gemma3": "gemma3_text"}


def family_of(model_type: str | None, where: str) -> Family:
    fam = FAMILIES.get(model_type or "")
    if fam is None:
        raise bad("model", where, f"unknown architecture model_type={model_type!r}; the bridge knows the causal LMs "
                  f"{sorted(FAMILIES)} and the image classifiers ['deit', 'vit', 'resnet']")
    return fam


def get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def logits_of(lm, hidden):
    """The family's logits from the decoder's last hidden states (what its ``*ForCausalLM`` forward computes)."""
    model = lm.model
    fam: Family = lm.family
    logits = get(model, fam.head)(hidden)
    if fam.logits == "softcap":
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = (logits / cap).tanh() * cap
    elif fam.logits == "scaled":
        logits = logits / model.config.logits_scaling
    return logits


def per_layer_kwargs(lm) -> bool:
    """Whether blocks of this model receive different keyword arguments (attention masks of sliding vs full
    attention, Gemma 3's local vs global rotary embeddings), so that calibration must capture each block's own."""
    if lm.arch != "llama":
        return False
    types = getattr(lm.model.config, "layer_types", None)
    return bool(types) and len(set(types)) > 1
