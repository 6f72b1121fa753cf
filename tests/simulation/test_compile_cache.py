"""XLA's compiled programs kept between processes (``PIH_JAX_CACHE``, ``pih simulate --compile-cache``): off unless
given; given, the first process stores its programs there and a later one loads them, and the records are equal
to those of a process that compiled everything itself."""

import json
import os
import subprocess
import sys

from pih import Store

GRID = """
import json, sys
from jax._src import monitoring
hits = []
monitoring.register_event_listener(lambda event, **kw: hits.append(event))
import sim
from pih import Prune, Quantize, Store
from sim.assumptions import A1
from sim.sweep import ModelSpec, Pairing, run_grid
run_grid(Pairing("compile-cache", Prune(0.5), Quantize(4)), [0.3, 0.6], [2, 4], range(2),
         ModelSpec(shape=(32, 64), n_samples=64), A1, Store(sys.argv[1]), progress=False)
print(json.dumps({"hits": hits.count("/jax/compilation_cache/cache_hits"),
                  "setting": sim.JAX_SETTINGS["compilation_cache"]}))
"""


def _run(store, cache):
    env = {k: v for k, v in os.environ.items() if k not in ("PIH_JAX_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the test's small programs compile in under 1 s
    if cache is not None:
        env["PIH_JAX_CACHE"] = str(cache)
    r = subprocess.run([sys.executable, "-c", GRID, str(store)], capture_output=True, text=True, env=env,
                       cwd=store.parent)  # a relative folder would land next to the store
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _science(path):
    return {d["key"]: (d["value"], json.dumps(d["extras"], sort_keys=True), d.get("arrays_sha256"))
            for d in Store(path).raw()}


def test_programs_stored_then_loaded_and_the_records_unchanged(tmp_path):
    cache = tmp_path / "xla"
    plain = _run(tmp_path / "plain", None)
    assert plain == {"hits": 0, "setting": {"before": None, "after": None}}
    first = _run(tmp_path / "first", cache)
    assert first["setting"]["after"] == str(cache)
    stored = sorted(p.name for p in cache.iterdir() if p.name.endswith("-cache"))
    assert any(n.startswith("jit_grid_one_seed") for n in stored), stored
    second = _run(tmp_path / "second", cache)
    assert second["hits"] >= len(stored) > first["hits"], (first, second, stored)
    a = _science(tmp_path / "plain")
    assert len(a) > 10 and a == _science(tmp_path / "first") == _science(tmp_path / "second")


def test_off_keeps_nothing(tmp_path):
    got = _run(tmp_path / "store", "off")
    assert got["hits"] == 0 and got["setting"]["after"] is None
    assert not (tmp_path / "off").exists() and not any(p.name == "off" for p in tmp_path.iterdir())
