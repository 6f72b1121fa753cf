"""`pih simulate --executor ray`: a preset's seeds computed on a local Ray instance (2 CPUs) give the records of the
serial run, bit for bit (values, extras, sidecar arrays), each key stored once by the driver. Skipped without Ray."""

import json
import os

import pytest

ray = pytest.importorskip("ray")

from pih.executors import RayExecutor, using  # noqa: E402
from sim.presets import run_preset  # noqa: E402

pytestmark = pytest.mark.slow


def _lines(path):
    out = {}
    for line in (path / "store" / "records.jsonl").read_text().splitlines():
        d = json.loads(line)
        assert d["key"] not in out
        d.pop("created")
        d.pop("check")
        d["provenance"].pop("versions")
        out[d["key"]] = d
    return out


def test_preset_seeds_on_ray_give_the_serial_records(tmp_path, monkeypatch):
    """The local instance is the executor's own, as `pih simulate --executor ray` starts it: its workers inherit
    the driver's environment (no runtime environment) with XLA's pool set to the task's CPUs."""
    monkeypatch.delenv("PIH_XLA_THREADS", raising=False)
    run_preset("harma", tmp_path / "serial", quick=True, seeds=2, progress=False)
    try:
        with RayExecutor(num_cpus=2) as ex, using(ex):
            assert ex.start()._inherited
            run_preset("harma", tmp_path / "ray", quick=True, seeds=2, progress=False)
        pids = {e["pid"] for e in ex.log}
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert "PIH_XLA_THREADS" not in os.environ, "the driver's own environment was changed"
    a, b = _lines(tmp_path / "serial"), _lines(tmp_path / "ray")
    assert len(a) > 100 and a == b
    assert len(ex.log) >= 2 and len(pids) == 2  # the seeds ran on two workers
    assert all(e["threads"]["xla"] == 1 for e in ex.log), "a worker's XLA pool is not its task's one CPU"
