"""XLA's CPU pool follows the thread policy: ``PIH_XLA_THREADS`` (``pih simulate --threads``; a Ray worker gets its
task's CPUs) sizes the pool when sim starts JAX's backend, every thread keeps the whole CPU mask, and the records
are the same whatever the pool's size."""

import json
import os
import subprocess
import sys

import pytest

from pih import Store

TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 or more CPUs")

PROBE = """
import json, os
import sim
import jax.numpy as jnp
(jnp.ones((64, 64)) @ jnp.ones((64, 64))).block_until_ready()  # the backend started (the default pool: lazily)
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
masks = {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}
print(json.dumps({"pool": names.count("tf_XLAEigen"), "masks": sorted(masks),
                  "setting": sim.JAX_SETTINGS["xla_threads"]}))
"""

GRID = """
import sys
from pih import Prune, Quantize, Store
from sim.assumptions import A1
from sim.sweep import ModelSpec, Pairing, run_grid
run_grid(Pairing("xla-threads", Prune(0.5), Quantize(4)), [0.3, 0.6], [2, 4], range(2),
         ModelSpec(shape=(32, 64), n_samples=64), A1, Store(sys.argv[1]), progress=False)
"""


def _run(code, env_threads, *args):
    env = {k: v for k, v in os.environ.items() if k != "PIH_XLA_THREADS"}
    if env_threads is not None:
        env["PIH_XLA_THREADS"] = env_threads
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


@TWO_CPUS
def test_the_pool_has_the_asked_threads_and_every_thread_the_whole_mask():
    full = sorted(os.sched_getaffinity(0))
    one = _run(PROBE, "1")
    assert one.returncode == 0, one.stderr
    got = json.loads(one.stdout.strip().splitlines()[-1])
    assert got["pool"] == 1 and got["setting"] == {"before": None, "after": 1}
    assert got["masks"] == [full], "a thread was left on the narrowed CPU mask"
    default = json.loads(_run(PROBE, None).stdout.strip().splitlines()[-1])
    assert default["pool"] == len(full) and default["setting"]["after"] is None


def test_a_bad_thread_count_is_one_line():
    r = _run("import sim", "two")
    assert r.returncode != 0 and "PIH_XLA_THREADS='two': must be a non-negative integer" in r.stderr


@TWO_CPUS
def test_records_do_not_depend_on_the_pool_size(tmp_path):
    for name, n in (("one", "1"), ("default", None)):
        r = _run(GRID, n, str(tmp_path / name))
        assert r.returncode == 0, r.stderr

    def science(st):
        return {d["key"]: (d["value"], json.dumps({k: v for k, v in d["extras"].items()}, sort_keys=True),
                           d.get("arrays_sha256")) for d in st.raw()}

    a, b = science(Store(tmp_path / "one")), science(Store(tmp_path / "default"))
    assert len(a) > 10 and a == b
