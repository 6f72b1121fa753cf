"""Transparent huge pages for a process's large buffers: glibc's ``glibc.malloc.hugetlb=1`` tunable, set at start.

The simulation's compiled sweep (XLA on the CPU) allocates and frees hundreds of MiB of temporaries per seed. In
4 KiB pages every fresh buffer is faulted in page by page: on 24 seeds of 512x512 layers 4.7 M minor page faults
and 8.6 s of kernel time against 14 s of user time (``benchmarks/bench_sim.py``). numpy already asks the kernel
for huge pages for its own large arrays (``madvise``); XLA's and torch's buffers come from glibc's ``malloc``,
which asks only when the tunable ``glibc.malloc.hugetlb=1`` is set, and glibc reads its tunables once, when a
process starts. With it: 91 k faults, 2.8 s of kernel time, the sweep 1.5x faster, the same records bit for bit.

So the entry points (the ``pih`` command, the benchmarks) call :func:`ensure` before anything else: where it helps
(Linux, glibc 2.35 or later, the kernel's transparent huge pages in "madvise" mode: in "always" mode every large
mapping gets them anyway, in "never" none can) and ``GLIBC_TUNABLES`` does not set it yet, the process executes
itself again, once, with the same interpreter and arguments and the tunable added. Child processes (Ray's
workers, ``pih`` subcommands run by tests) inherit it. ``PIH_HUGEPAGES=0`` turns it off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), None where it cannot be read."""
    try:
        text = open(path).read()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError, AttributeError, TypeError):
        return None


def _tunables(env) -> dict[str, str]:
    """``GLIBC_TUNABLES`` of ``env`` as {name: value}."""
    return dict((t.split("=", 1) + [""])[:2] for t in env.get("GLIBC_TUNABLES", "").split(":") if t)


def plan(env, thp: str | None, glibc: tuple[int, int] | None) -> dict[str, str] | None:
    """The environment to execute again with, or None when nothing is to be done (see the module's docstring)."""
    if env.get("PIH_HUGEPAGES", "1") == "0" or thp != "madvise" or glibc is None or glibc < (2, 35):
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in _tunables(env):
        return None  # set already (by us, or by the user, to any value)
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"}


def ensure() -> None:
    """Execute this process again with huge pages for malloc's large buffers when that helps; else return."""
    new = plan(os.environ, thp_mode(), glibc_version())
    argv = getattr(sys, "orig_argv", None)
    if new is None or not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], new)
    except OSError:  # cannot execute again: go on with small pages
        return


def active() -> bool:
    """Whether this process started with the tunable (what :func:`ensure` arranges)."""
    return _tunables(os.environ).get(TUNABLE) == "1"
