"""The process-wide thread policy (pih.threads): validation, torch and BLAS set together, numpy analysis on one."""

import pytest
from threadpoolctl import threadpool_info

from pih import threads
from pih.errors import PihError


def _blas():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True, None])
def test_threads_must_be_a_non_negative_integer(bad):
    with pytest.raises(PihError, match="experiment.threads"):
        threads.check_threads(bad, "experiment.threads")


def test_set_threads_sets_torch_and_blas_together_and_analysis_runs_on_one():
    torch = pytest.importorskip("torch")
    before_torch, before = torch.get_num_threads(), threads.current()
    try:
        threads.set_threads(2)
        assert torch.get_num_threads() == 2
        assert all(n == 2 for n in _blas())
        with threads.numpy_analysis():
            assert all(n == 1 for n in _blas())
        assert all(n == 2 for n in _blas())
        assert threads.set_threads(0) == 2  # 0 leaves the policy (and the libraries) as they are
        threads.set_threads(1)
        assert torch.get_num_threads() == 1 and all(n == 1 for n in _blas())
    finally:
        torch.set_num_threads(before_torch)
        threads._state["threads"] = before


def test_experiment_config_refuses_bad_threads():
    from pih.bridge.experiment import parse_config

    with pytest.raises(PihError, match="experiment.threads"):
        parse_config({"experiment": {"name": "x", "model": "tiny-llama", "threads": -2}})
