"""The project's own small models, trained offline with a fixed seed and cached.

``tiny-llama``: a 4-block LLaMA (hidden 128, MLP 384, 4 heads, byte-level BPE vocabulary of 512 trained on the
same corpus) trained on the train split of an offline corpus (default: the King James Bible). A few minutes on
2 CPU cores. ``tiny-deit``: a 4-block DeiT on an offline image set (digits; fashion-mnist with 4x4 patches).
``tiny-resnet``: a 6-layer basic-block ResNet (transformers' ``ResNetForImageClassification``; stem 16 channels,
stages 16/32/64 wide, 2 layers each) on the same image sets; 8x8 digits are upsampled to 32x32 (see
:func:`pih.bridge.conv.resize_hook`). Cached as Hugging Face folders under
``<cache>/models/tiny-<model>-<data>-s<seed>-<steps>``; a folder is published only once complete (written to a
temporary name, then renamed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._common import bad, cache_dir, offline_env, seed_all

offline_env()  # before any transformers import (each training function imports torch and transformers itself)


@dataclass(frozen=True)
class TinyLlamaConfig:
    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    seqlen: int = 128
    batch_size: int = 16
    steps: int = 500
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1


def _save_atomically(folder: Path, info: dict, *savables) -> None:
    """Write each ``savable`` (``save_pretrained``) and ``train_info.json`` to ``folder`` via a temporary folder
    renamed at the end, so an interrupted run never leaves a folder that looks trained."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for obj in savables:
        obj.save_pretrained(str(tmp))
    (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _fit_classifier(model, ims, cfg, desc: str, seed: int, progress: bool) -> tuple[list[float], float]:
    """AdamW with warm-up and cosine decay on random batches of ``ims``' train split (seeded); returns the losses
    and the test accuracy (evaluated in chunks of 500 images, eval mode)."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(cfg.steps), desc=desc, file=sys.stderr, disable=not progress):
        idx = torch.randint(0, ims.train_x.shape[0], (cfg.batch_size,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=ims.train_x[idx]).logits, ims.train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(pixel_values=ims.test_x[s : s + 500]).logits.argmax(-1)
                           == ims.test_y[s : s + 500]).sum()) for s in range(0, ims.test_x.shape[0], 500))
    return losses, correct / ims.test_x.shape[0]


def tiny_llama_folder(corpus: str = "kjv", seed: int = 0, cache: str | None = None, steps: int | None = None,
                      train_if_missing: bool = False, progress: bool = True) -> Path:
    cfg = TinyLlamaConfig() if steps is None else TinyLlamaConfig(steps=steps)
    safe = corpus.replace("/", "_").replace(":", "_")
    folder = cache_dir(cache) / "models" / f"tiny-llama-{safe}-s{seed}-{cfg.steps}"
    if (folder / "config.json").is_file() and (folder / "train_info.json").is_file():
        return folder
    if not train_if_missing:
        raise bad("model", f"tiny-llama:{corpus}",
                  f"not trained yet in {folder}; run `pih train tiny-llama --data {corpus} --seed {seed}`")
    train_tiny_llama(folder, corpus, seed, cfg, progress=progress)
    return folder


def _train_tokenizer(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([text[i : i + 10000] for i in range(0, len(text), 10000)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   model_max_length=1 << 30)


def train_tiny_llama(folder: Path, corpus_name: str, seed: int, cfg: TinyLlamaConfig, progress: bool = True) -> Path:
    import torch
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    from .data import load_corpus, tokenize

    t0 = time.time()
    seed_all(seed)
    corpus = load_corpus(corpus_name)
    tok = _train_tokenizer(corpus.train, cfg.vocab_size)
    ids = tokenize(tok, corpus.train)
    lcfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id, use_cache=False, initializer_range=0.02,
    )
    seed_all(seed)
    model = LlamaForCausalLM(lcfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"train tiny-llama[{corpus_name}]", file=sys.stderr, disable=not progress)
    for step in bar:
        starts = torch.randint(0, ids.numel() - cfg.seqlen - 1, (cfg.batch_size,), generator=gen)
        batch = torch.stack([ids[s : s + cfg.seqlen] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    info = {"corpus": corpus.tag, "seed": seed, "config": asdict(cfg), "train_tokens": int(ids.numel()),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": time.time() - t0,
            "torch": torch.__version__, "n_params": sum(p.numel() for p in model.parameters())}
    _save_atomically(folder, info, model, tok)
    return folder


@dataclass(frozen=True)
class TinyDeiTConfig:
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 128
    patch_size: int = 2
    batch_size: int = 64
    steps: int = 800
    lr: float = 3e-3
    weight_decay: float = 0.05


def tiny_deit_folder(data: str = "digits", seed: int = 0, cache: str | None = None, steps: int | None = None,
                     train_if_missing: bool = False, progress: bool = True) -> Path:
    cfg = TinyDeiTConfig() if steps is None else TinyDeiTConfig(steps=steps)
    folder = cache_dir(cache) / "models" / f"tiny-deit-{data}-s{seed}-{cfg.steps}"
    if (folder / "config.json").is_file() and (folder / "train_info.json").is_file():
        return folder
    if not train_if_missing:
        raise bad("model", f"tiny-deit:{data}", f"not trained yet in {folder}; run `pih train tiny-deit --seed {seed}`")
    import torch
    from transformers import DeiTConfig, DeiTForImageClassification

    from .data import load_images

    t0 = time.time()
    ims = load_images(data)
    seed_all(seed)
    h = ims.train_x.shape[-1]
    if h >= 16 and cfg.patch_size < 4:  # 28x28 (fashion-mnist): 4x4 patches (49 tokens) keep training short
        cfg = dataclasses.replace(cfg, patch_size=4)
    dcfg = DeiTConfig(image_size=h, patch_size=cfg.patch_size, num_channels=ims.train_x.shape[1],
                      hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                      num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                      num_labels=ims.num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = DeiTForImageClassification(dcfg)
    losses, acc = _fit_classifier(model, ims, cfg, f"train tiny-deit[{data}]", seed, progress)
    info = {"data": ims.tag, "seed": seed, "config": asdict(cfg),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "test_accuracy": acc, "seconds": time.time() - t0, "torch": torch.__version__,
            "n_params": sum(p.numel() for p in model.parameters())}
    _save_atomically(folder, info, model)
    return folder


@dataclass(frozen=True)
class TinyResNetConfig:
    embedding_size: int = 16
    hidden_sizes: tuple[int, ...] = (16, 32, 64)
    depths: tuple[int, ...] = (2, 2, 2)
    batch_size: int = 64
    steps: int = 600
    lr: float = 3e-3
    weight_decay: float = 0.05
    min_input_size: int = 28  # smaller images (8x8 digits) are upsampled (nearest) to 32x32


def tiny_resnet_folder(data: str = "digits", seed: int = 0, cache: str | None = None, steps: int | None = None,
                       train_if_missing: bool = False, progress: bool = True) -> Path:
    """A small ResNet (basic blocks, no torchvision) trained on ``data`` (digits | fashion-mnist), cached."""
    cfg = TinyResNetConfig() if steps is None else TinyResNetConfig(steps=steps)
    folder = cache_dir(cache) / "models" / f"tiny-resnet-{data}-s{seed}-{cfg.steps}"
    if (folder / "config.json").is_file() and (folder / "train_info.json").is_file():
        return folder
    if not train_if_missing:
        raise bad("model", f"tiny-resnet:{data}",
                  f"not trained yet in {folder}; run `pih train tiny-resnet --data {data} --seed {seed}`")
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from .conv import resize_hook
    from .data import load_images

    t0 = time.time()
    ims = load_images(data)
    seed_all(seed)
    h = ims.train_x.shape[-1]
    size = 32 if h < cfg.min_input_size else None
    extra = {"pih_input_size": size} if size else {}
    rcfg = ResNetConfig(num_channels=ims.train_x.shape[1], embedding_size=cfg.embedding_size,
                        hidden_sizes=list(cfg.hidden_sizes), depths=list(cfg.depths), layer_type="basic",
                        hidden_act="relu", downsample_in_first_stage=False, num_labels=ims.num_labels, **extra)
    model = ResNetForImageClassification(rcfg)
    if size:
        resize_hook(model, size)
    losses, acc = _fit_classifier(model, ims, cfg, f"train tiny-resnet[{data}]", seed, progress)
    info = {"data": ims.tag, "seed": seed, "config": asdict(cfg),
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "test_accuracy": acc, "seconds": time.time() - t0, "torch": torch.__version__,
            "n_params": sum(p.numel() for p in model.parameters()), "input_size": size or h,
            "train_images": int(ims.train_x.shape[0]), "train_samples_drawn": cfg.steps * cfg.batch_size,
            "batchnorm": "trained in train mode, evaluated with running statistics"}
    _save_atomically(folder, info, model)
    return folder
