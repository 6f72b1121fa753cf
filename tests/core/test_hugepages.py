"""pih.hugepages: when the process executes itself again with glibc's huge-page tunable, that the pih command does
it, and that the simulation's records do not depend on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pih import hugepages as hp

ENV = {"PATH": "/usr/bin"}


@pytest.mark.parametrize("env,thp,glibc,want", [
    (ENV, "madvise", (2, 36), "glibc.malloc.hugetlb=1"),
    (ENV, "madvise", (2, 35), "glibc.malloc.hugetlb=1"),
    ({**ENV, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "madvise", (2, 36),
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({**ENV, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "madvise", (2, 36), None),  # set already: no loop
    ({**ENV, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), None),  # the user's own choice
    ({**ENV, "PIH_HUGEPAGES": "0"}, "madvise", (2, 36), None),
    (ENV, "always", (2, 36), None),  # every large mapping has them already
    (ENV, "never", (2, 36), None),
    (ENV, None, (2, 36), None),  # no such kernel file (not Linux)
    (ENV, "madvise", (2, 34), None),  # the tunable came with glibc 2.35
    (ENV, "madvise", None, None),  # not glibc (musl, macOS)
])
def test_plan(env, thp, glibc, want):
    got = hp.plan(env, thp, glibc)
    assert (got if got is None else got["GLIBC_TUNABLES"]) == want
    if got is not None:  # everything else is passed on unchanged
        assert {k: v for k, v in got.items() if k != "GLIBC_TUNABLES"} == {k: v for k, v in env.items()
                                                                           if k != "GLIBC_TUNABLES"}


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    for text, mode in [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                       ("always madvise [never]", "never"), ("garbage", None)]:
        (tmp_path / "enabled").write_text(text)
        assert hp.thp_mode(str(tmp_path / "enabled")) == mode
    assert hp.thp_mode(str(tmp_path / "missing")) is None


def _helps() -> bool:
    return hp.plan({}, hp.thp_mode(), hp.glibc_version()) is not None


def _child_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "PIH_HUGEPAGES")}
    return {**env, **extra}


def test_the_pih_command_starts_again_with_huge_pages_where_they_help():
    """``main()`` as the command runs it (no argv), for a command that runs the simulation: afterwards the process
    has the tunable where it helps, and never otherwise; ``PIH_HUGEPAGES=0`` keeps small pages, and so do the
    commands that do not run the simulation (the torch bridge gains nothing, and starting again costs the
    imports once more)."""
    for cmd, extra, want in [("compare", {}, _helps()), ("compare", {"PIH_HUGEPAGES": "0"}, False),
                             ("records", {}, False)]:
        code = (f"import sys; sys.argv = ['pih', {cmd!r}, '/no/such/store']; from pih import cli, hugepages; "
                "cli.main(); print('ACTIVE', hugepages.active(), flush=True)")
        r = subprocess.run([sys.executable, "-c", code], env=_child_env(**extra), capture_output=True, text=True,
                           timeout=120)
        assert "no such" in r.stderr, r.stderr[-2000:]  # the command ran (and failed as it should)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ACTIVE")]
        assert lines == [f"ACTIVE {want}"], (cmd, r.stdout[-2000:])  # once: the process was replaced, not forked


@pytest.mark.skipif(not _helps(), reason="the command never starts again on this machine (kernel mode or C library)")
def test_a_plugin_is_imported_once_when_the_command_starts_again(tmp_path):
    """The command decides on huge pages before it imports any plugin (named with --plugin, before or after the
    subcommand): a plugin with effects at import sees them once, in the process that runs the command."""
    plugin = tmp_path / "noisy_plugin.py"
    plugin.write_text("import os\nprint('IMPORTED', os.getpid(), flush=True)\n")
    for args in (["--plugin", str(plugin), "compare", "/no/such/store"],
                 ["compare", f"--plugin={plugin}", "/no/such/store"]):
        code = f"import sys; sys.argv = ['pih', *{args!r}]; from pih import cli; cli.main()"
        r = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True,
                           timeout=120)
        assert "no such" in r.stderr, r.stderr[-2000:]
        assert len([ln for ln in r.stdout.splitlines() if ln.startswith("IMPORTED")]) == 1, r.stdout[-2000:]
    from pih.cli import command_of

    assert command_of(["--plugin", "compare", "simulate", "x"]) == "simulate"  # "compare" is the plugin here
    assert command_of(["--plugin=a.py", "report"]) == "report" and command_of(["--version"]) is None


def test_a_call_from_python_never_executes_again():
    code = ("from pih import cli, hugepages; cli.main(['compare', '/no/such/store']); "
            "print('ACTIVE', hugepages.active())")
    r = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("ACTIVE")] == ["ACTIVE False"]


SIM = """
from pih.hugepages import ensure, active
ensure()
import json
from pih import Prune, Quantize
from sim import assumptions as AS
from sim.sweep import ModelSpec, Pairing, run_grid
ms = ModelSpec(shape=(64, 96), n_samples=32, dist="student_t", act_outliers=2)
g = run_grid(Pairing("hp", Prune(0.5), Quantize(4)), [0.2, 0.5], [3, 4], range(2), ms, AS.A1, progress=False)
print("RESULT", json.dumps({"active": active(), "values": [[r.key, r.value] for r in g.records]}))
"""


@pytest.mark.skipif(not _helps(), reason="huge pages change nothing on this machine (kernel mode or C library)")
def test_simulation_records_are_the_same_with_and_without_huge_pages():
    got = {}
    for flag in ("1", "0"):
        r = subprocess.run([sys.executable, "-c", SIM], env=_child_env(PIH_HUGEPAGES=flag), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        got[flag] = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT"))[7:])
    assert got["1"]["active"] and not got["0"]["active"]
    assert got["1"]["values"] == got["0"]["values"]  # bit for bit (JSON keeps every digit of a float)
    assert len(got["1"]["values"]) == 2 * (2 + 2 + 2 * 2 * 2)
