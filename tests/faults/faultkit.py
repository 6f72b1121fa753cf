"""Helpers of the fault-injection suite (processes, kills, the one-line check, small file systems)."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pih_cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "pih.cli", *map(str, argv)]


def _as_from_a_shell() -> None:
    """In the child before exec: SIGINT and SIGTERM at their defaults and unblocked, as a shell starts a command,
    whatever the test process (its libraries' threads and handlers) left in the state a child inherits."""
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def start(*argv, env=None) -> subprocess.Popen:
    return subprocess.Popen(pih_cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})}, preexec_fn=_as_from_a_shell)


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(proc: subprocess.Popen, store_file: Path, at_least: int, sig: int, delay: float = 0.0,
              timeout: float = 300) -> int:
    """Send ``sig`` to ``proc`` once ``store_file`` holds ``at_least`` lines (then ``delay`` s later); return how
    many lines it held at the kill."""
    deadline = time.time() + timeout
    while lines_in(store_file) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before the kill: {proc.stderr.read()}")
        assert time.time() < deadline, "the process made no progress"
        time.sleep(0.002)
    if delay:
        time.sleep(delay)
    n = lines_in(store_file)
    proc.send_signal(sig)
    return n


def one_line(err: str, cmd: str) -> str:
    """The single stderr line of a failed command (warnings aside), after checking there is no traceback."""
    assert "Traceback" not in err, err
    got = [s for s in err.splitlines() if s.strip() and ": warning: " not in s and not s.startswith("\r")
           and "it/s]" not in s]
    assert len(got) == 1, f"expected one line, got:\n{err}"
    assert got[0].startswith(f"pih {cmd}: "), got[0]
    return got[0]


def root_can_mount() -> str | None:
    """None when this process may mount a tmpfs, else the reason it may not."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (a real full disk / read-only file system)"
    probe = Path(f"/tmp/pih-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
        if r.returncode != 0:
            return f"mount is not permitted here ({r.stderr.decode().strip() or r.returncode})"
        subprocess.run(["umount", str(probe)], check=True)
        return None
    finally:
        probe.rmdir()
