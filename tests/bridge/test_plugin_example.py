"""The worked plugin example (docs/examples/obd_plugin.py, docs/plugins.md) does what docs/plugins.md says: from
that one file, a new pruner passes the kernel conformance suite in both backends and agrees across them given the
same priorities, runs in a simulated grid, in ``pih run`` and in ``pih advise``; its assumption set runs from
``pih simulate --assumptions sqrt``. Every step runs inside ``registry.scoped()``: the package's registries are
left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pih import Prune, Quantize, registry
from pih.cli import main

pytest.importorskip("jax")

PLUGIN = str(Path(__file__).resolve().parents[2] / "docs" / "examples" / "obd_plugin.py")


@pytest.fixture
def plugin():
    with registry.scoped():
        registry.load_plugin(PLUGIN)
        yield


def test_the_plugin_pruner_conforms_and_agrees_across_backends(plugin):
    from test_kernel_parity import _bridge, _conformance, _inputs, _sim

    spec = Prune(0.5, "obd")
    for backend in ("torch", "sim"):
        _conformance(backend, spec)
    for seed in range(3):
        W, H, P = _inputs(seed, ties=True)
        wb, mb, _ = _bridge(spec, W, H, P)
        ws, ms, _ = _sim(spec, W, H, P)
        assert (mb == ms).all() and mb.sum() == int(0.5 * W.size)
        np.testing.assert_array_equal(wb, ws)


def test_the_plugin_pruner_in_a_simulated_grid(plugin):
    from sim import ModelSpec, Pairing, run_grid

    g = run_grid(Pairing("obd x rtn", Prune(0.5, "obd"), Quantize(4)), [0.3, 0.6], [3, 4], [0, 1],
                 model=ModelSpec(n_layers=2, shape=(32, 32)), progress=False, n_boot=50)
    assert np.isfinite(np.asarray(g.A)).all()


def test_the_plugin_in_pih_run_advise_and_simulate(plugin, tiny_folder, tiny_source, corpus_name, cache, tmp_path,
                                                  capsys):
    cfg = tmp_path / "obd.toml"
    cfg.write_text(f"""
[experiment]
name = "obd"
model = "{tiny_source}"
seed = 0
cache = "{cache}"
[data]
eval = "{corpus_name}"
calibration = "{corpus_name}"
seqlen = 64
eval_tokens = 512
calibration_size = 8
[prune]
criterion = "obd"
ratios = [0.5]
[quantize]
bits = [4]
""")
    assert main(["--plugin", PLUGIN, "run", str(cfg), "--out", str(tmp_path / "run"), "--format", "json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "P[obd,unstructured,0.5] -> Q[4b,channel,sym,absmax]" in [p["pipeline"] for p in out["points"]]
    assert len(out["pairs"]) == 1 and out["pairs"][0]["analysis"]["t1_identity_gap"] < 1e-9
    rc = main(["--plugin", PLUGIN, "advise", tiny_source, "--prune", "obd:0.5", "--quantize", "rtn:4", "--cache",
               cache, "--data", corpus_name, "--seqlen", "64", "--calibration-size", "8", "--eval-tokens", "256",
               "--no-progress", "--format", "json", "--report", str(tmp_path / "rep")])
    assert rc == 0
    adv = json.loads(capsys.readouterr().out)
    assert adv["recommendation"]
    rc = main(["--plugin", PLUGIN, "simulate", "--preset", "disjoint", "--quick", "--assumptions", "sqrt",
               "--out", str(tmp_path / "sim"), "--no-progress", "--format", "json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(tmp_path / "sim")
