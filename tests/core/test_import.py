import subprocess
import sys


def test_import_pih_does_not_import_jax_or_torch():
    code = (
        "import pih, pih.cli, sys; pih.cli.build_parser(); "
        "bad = [m for m in ('jax', 'torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_check_can_fail():
    """The subprocess check above really detects an import (guard against a vacuous test)."""
    code = "import pih, numpy, sys; import scipy; assert 'scipy' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode != 0
