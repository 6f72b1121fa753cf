"""Fidelity check: run the published reference algorithms and pih.bridge on the same tiny LLaMA with the same
calibration and evaluation windows, and print both perplexities as one JSON line.

The reference code is NOT part of this repository: check out IST-DASLab/gptq, IST-DASLab/sparsegpt and
locuslab/wanda into folders named IST-DASLab+gptq, IST-DASLab+sparsegpt and locuslab+wanda under --refs. This
script imports their modules (GPTQ/Quantizer, SparseGPT and their llama_sequential loops; Wanda's prune_wanda and
prune_magnitude), feeds them our calibration windows instead of C4, and adds the rotary position embeddings that
transformers 5 expects to their decoder-layer calls. Results: experiments/measured/fidelity.json.

    python experiments/fidelity_check.py gptq --bits 4 --refs /path/to/refs
    python experiments/fidelity_check.py sparsegpt --ratio 0.5 --nm 2:4 --refs /path/to/refs
"""

# ruff: noqa: E402 - a script: the environment is set before the imports it affects
import argparse
import json
import os
import sys
import types

import torch

torch.set_num_threads(1)
torch.cuda.synchronize = lambda *a, **k: None
torch.cuda.empty_cache = lambda *a, **k: None
ap = argparse.ArgumentParser()
ap.add_argument("method")
ap.add_argument("--bits", type=int, default=4)
ap.add_argument("--ratio", type=float, default=0.5)
ap.add_argument("--nm", default="")
ap.add_argument("--nsamples", type=int, default=32)
ap.add_argument("--model", default="tiny-llama:kjv")
ap.add_argument("--seqlen", type=int, default=128)
ap.add_argument("--eval_tokens", type=int, default=16384)
ap.add_argument("--sym", action="store_true")
ap.add_argument("--act_order", action="store_true")
ap.add_argument("--refs", required=True)
ap.add_argument("--cache", default=None)
a = ap.parse_args()
if a.cache:
    os.environ["PIH_CACHE"] = a.cache
from transformers.models.llama import modeling_llama as ML

from pih import Prune, Quantize
from pih.bridge.data import calibration_windows, eval_windows, load_corpus, tokenize
from pih.bridge.engine import BridgeSettings, apply_pipeline
from pih.bridge.evaluate import perplexity
from pih.bridge.models import load_model


def fresh():
    lm = load_model(a.model, cache=a.cache)
    lm.model.seqlen = a.seqlen
    lm.model.hf_device_map = {}
    return lm


lm = fresh()
c = load_corpus("kjv")
calib = calibration_windows(tokenize(lm.tokenizer, c.train), a.seqlen, a.nsamples, 0)
ev = eval_windows(tokenize(lm.tokenizer, c.test), a.seqlen, a.eval_tokens)
dense = perplexity(lm, ev)["ppl"]

# --- reference: patch the decoder layer so their layer(inp, attention_mask=..., position_ids=...) calls work
_orig = ML.LlamaDecoderLayer.forward
ROT = {}


def fwd(
    self,
    hidden_states,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    use_cache=False,
    cache_position=None,
    position_embeddings=None,
    **kw,
):
    if position_embeddings is None:
        if position_ids is None:
            position_ids = torch.arange(hidden_states.shape[1])[None]
        position_embeddings = ROT["r"](hidden_states, position_ids)
    return _orig(
        self,
        hidden_states,
        attention_mask=attention_mask,
        position_ids=position_ids,
        position_embeddings=position_embeddings,
        **kw,
    )


ref = fresh()
ROT["r"] = ref.model.model.rotary_emb
ML.LlamaDecoderLayer.forward = fwd
loader = [(calib[i : i + 1], None) for i in range(a.nsamples)]
dev = torch.device("cpu")
nm = tuple(int(x) for x in a.nm.split(":")) if a.nm else None
if a.method in ("gptq", "rtn"):
    sys.path.insert(0, os.path.join(a.refs, "IST-DASLab+gptq"))
    import llama as R

    R.args = types.SimpleNamespace(
        nsamples=a.nsamples,
        true_sequential=False,
        wbits=a.bits,
        sym=a.sym,
        groupsize=-1,
        act_order=a.act_order,
        static_groups=False,
        percdamp=0.01,
        nearest=(a.method == "rtn"),
    )
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        if a.method == "gptq":
            R.llama_sequential(ref.model, loader, dev)
        else:
            from quant import Quantizer, quantize

            for layer in ref.model.model.layers:
                for _name, m in R.find_layers(layer).items():
                    q = Quantizer()
                    q.configure(a.bits, perchannel=True, sym=False, mse=False)
                    q.find_params(m.weight.data, weight=True)
                    m.weight.data = quantize(m.weight.data, q.scale, q.zero, q.maxq)
    spec = Quantize(a.bits, symmetric=a.sym, update="gptq" if a.method == "gptq" else "none")
elif a.method == "sparsegpt":
    sys.path.insert(0, os.path.join(a.refs, "IST-DASLab+sparsegpt"))
    import llama as R

    R.args = types.SimpleNamespace(
        nsamples=a.nsamples,
        true_sequential=False,
        wbits=16,
        sparsity=a.ratio,
        prunen=(nm[1] - nm[0]) if nm else 0,
        prunem=nm[1] if nm else 0,
        percdamp=0.01,
        blocksize=128,
        minlayer=-1,
        maxlayer=1000,
        prune_only="",
        invert=False,
    )
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        R.llama_sequential(ref.model, loader, dev)
    spec = Prune(a.ratio, "sparsegpt", a.nm or "unstructured")
elif a.method in ("wanda", "magnitude"):
    sys.path.insert(0, os.path.join(a.refs, "locuslab+wanda"))
    _d = types.ModuleType("datasets")
    _d.load_dataset = None
    sys.modules["datasets"] = _d
    import lib.prune as R

    R.get_loaders = lambda *x, **k: (loader, None)
    args = types.SimpleNamespace(nsamples=a.nsamples, seed=0, sparsity_ratio=a.ratio, use_variant=False)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        if a.method == "wanda":
            R.prune_wanda(
                args, ref.model, ref.tokenizer, dev, prune_n=(nm[1] - nm[0]) if nm else 0, prune_m=nm[1] if nm else 0
            )
        else:
            _cuda = torch.Tensor.cuda
            torch.Tensor.cuda = lambda self, *x, **k: self
            R.prune_magnitude(
                args, ref.model, ref.tokenizer, dev, prune_n=(nm[1] - nm[0]) if nm else 0, prune_m=nm[1] if nm else 0
            )
            torch.Tensor.cuda = _cuda
    spec = Prune(a.ratio, a.method, a.nm or "unstructured")
ML.LlamaDecoderLayer.forward = _orig
ppl_ref = perplexity(ref, ev)["ppl"]
mine = fresh()
apply_pipeline(mine, (spec,), calib, BridgeSettings(act_order=a.act_order), progress=False)
ppl_mine = perplexity(mine, ev)["ppl"]
print(
    json.dumps(
        {
            "method": a.method,
            "spec": spec.label,
            "nsamples": a.nsamples,
            "seqlen": a.seqlen,
            "eval_tokens": int(ev.numel()),
            "dense": dense,
            "reference": ppl_ref,
            "pih": ppl_mine,
            "rel_diff": (ppl_mine - ppl_ref) / ppl_ref,
        }
    )
)
