import subprocess
import sys


def test_import_pih_does_not_import_jax_or_torch():
    code = (
        "import pih, pih.cli, sys; pih.cli.build_parser(); "
        "bad = [m for m in ('jax', 'torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_ray_driver_side_of_the_bridge_does_not_import_torch():
    """A Ray driver plans and stores a bridge grid without torch (its workers import it): the modules it loads
    (experiment, settings, train's task table) stay torch-free, so the driver costs the workers no CPU at start-up."""
    code = (
        "import sys, pih.bridge.experiment, pih.bridge.settings, pih.bridge.train; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_check_can_fail():
    """The subprocess check above really detects an import (guard against a vacuous test)."""
    code = "import pih, numpy, sys; import scipy; assert 'scipy' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode != 0


def test_the_public_api_is_exported():
    """What users call is importable from the package itself (docs/core-api.md)."""
    import pih

    for name in ("Prune", "Quantize", "Store", "run_sweep", "analyze_grid", "order_advantage_of", "seed_summary",
                 "noise_floor", "cluster_bootstrap", "permutation_test", "evidence", "Advice", "registry",
                 "pair_decomposition", "owner_errors"):
        assert name in pih.__all__ and hasattr(pih, name), name
    assert callable(pih.registry.kernel_for)
