"""The README's Python snippet works from the folder above a clone named ``pih`` with the install ``make install``
makes: the clone's root (no ``__init__.py``) must not shadow the package as a namespace package.

The install is repeated in a throwaway virtual environment (offline: no build isolation, no dependencies; the
current environment's site-packages give numpy and setuptools), once with the Makefile's own ``pip install -e``
options and once without them, which must show the shadowing (else this test could not catch it).
"""

import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _makefile_editable_options() -> list[str]:
    """The options of the Makefile's ``pip install -e`` line beyond the target (e.g. --config-settings ...)."""
    lines = [ln for ln in (ROOT / "Makefile").read_text().splitlines()
             if "pip install" in ln and " -e " in ln and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0], comments=True)
    words = words[words.index("install") + 1:]
    i = words.index("-e")
    del words[i:i + 2]  # the target: this test installs its copy of the project
    return [w for w in words if w not in ("--quiet", "-q")]


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the core", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _venv_with_install(where: Path, clone: Path, options: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    py = where / "bin" / "python"
    sp = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: the current environment's packages, without running its own .pth files (its pih install)
    Path(sp, "zz_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-e", str(clone), *options], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return py


@pytest.mark.slow
def test_readme_snippet_runs_from_the_folder_above_a_clone(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    pytest.importorskip("pip")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"setuptools {setuptools.__version__} cannot build this project offline (needs >= 68)")
    above = tmp_path / "above"
    clone = above / "pih"
    for name in ("pih", "sim"):
        shutil.copytree(ROOT / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    assert not (clone / "__init__.py").exists()
    snippet = _readme_snippet() + "\nprint('ok', pih.__file__)\n"

    py = _venv_with_install(tmp_path / "venv", clone, _makefile_editable_options())
    r = subprocess.run([str(py), "-c", snippet], cwd=above, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ok {clone / 'pih' / '__init__.py'}" in r.stdout

    # the default editable install (an import hook behind the path finder) is shadowed from the same folder
    py0 = _venv_with_install(tmp_path / "venv0", clone, [])
    r = subprocess.run([str(py0), "-c", snippet], cwd=above, capture_output=True, text=True)
    assert r.returncode != 0 and "has no attribute" in r.stderr, "the shadowing is not reproduced: " + r.stdout
