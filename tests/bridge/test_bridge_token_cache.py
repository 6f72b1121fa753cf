"""Tokenized corpora cached by content: the same ids as tokenizing, keyed by the tokenizer's identity and the text."""

import numpy as np
import torch

from pih.bridge import data as D


def _text(corpus, n=150_000):
    return corpus.train[:n]


def test_cached_ids_are_the_tokenized_ids(tiny, corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("PIH_TOKEN_CACHE", raising=False)
    text = _text(corpus)
    direct = tiny.tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False).input_ids.reshape(-1)
    first = D.tokenize(tiny.tokenizer, text, cache=str(tmp_path))
    files = list((tmp_path / "tokens").glob("*.npy"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(type(tiny.tokenizer), "__call__", lambda *a, **k: calls.append(1))
    second = D.tokenize(tiny.tokenizer, text, cache=str(tmp_path))  # from the cache: the tokenizer is not called
    assert not calls
    assert first.dtype == second.dtype == torch.long
    assert torch.equal(first, direct) and torch.equal(second, direct)


def test_the_key_names_text_and_tokenizer(tiny, corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("PIH_TOKEN_CACHE", raising=False)
    text = _text(corpus)
    a = D._token_cache_path(tiny.tokenizer, text, str(tmp_path))
    assert a == D._token_cache_path(tiny.tokenizer, text, str(tmp_path))
    assert a != D._token_cache_path(tiny.tokenizer, text[:-1] + "x", str(tmp_path))
    monkeypatch.setattr(D, "tokenizer_identity", lambda tok: "another tokenizer")
    assert a != D._token_cache_path(tiny.tokenizer, text, str(tmp_path))


def test_short_texts_off_switch_and_damaged_files(tiny, corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("PIH_TOKEN_CACHE", raising=False)
    assert D._token_cache_path(tiny.tokenizer, "short text", str(tmp_path)) is None
    text = _text(corpus)
    monkeypatch.setenv("PIH_TOKEN_CACHE", "0")
    D.tokenize(tiny.tokenizer, text, cache=str(tmp_path))
    assert not (tmp_path / "tokens").exists()
    monkeypatch.delenv("PIH_TOKEN_CACHE")
    good = D.tokenize(tiny.tokenizer, text, cache=str(tmp_path))
    path = D._token_cache_path(tiny.tokenizer, text, str(tmp_path))
    path.write_bytes(b"not an npy file")
    assert torch.equal(D.tokenize(tiny.tokenizer, text, cache=str(tmp_path)), good)  # tokenized again, rewritten
    assert np.array_equal(np.load(path).astype(np.int64), good.numpy())
