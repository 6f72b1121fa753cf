"""The ``pih`` command. Subcommands live in ``pih/commands/<name>.py`` and are listed in ``COMMANDS``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import warnings

from . import __version__
from .commands import COMMANDS
from .errors import Interrupted, PihError, PihWarning

#: exit codes: 0 success, 2 a user-caused error (one line on stderr), 3 finished with failed measurements,
#: 70 an internal error (a bug: one line; PIH_TRACEBACK=1 shows the traceback), 130 interrupted (SIGINT),
#: 141 the output was closed early (``pih records | head``)
EXIT_USER, EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PIPE = 2, 3, 70, 130, 141


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pih",
        description="Which goes first, pruning or quantization? Measure the order advantage A(Q->P), the "
        "compression equivalent ratios, and check the theory on simulated and real weights.",
    )
    p.add_argument("--version", action="version", version=f"pih {__version__}")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module (dotted name or a .py file) that registers methods (pih.registry) or "
                   "assumption sets (sim.assumptions) before the command runs; repeatable. Installed packages "
                   "that declare 'pih.methods' or 'pih.assumptions' entry points are loaded always")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"pih.commands.{name}")
        except ImportError as exc:  # a subcommand whose optional dependencies are missing
            sp = sub.add_parser(name, help=f"(unavailable: {exc})")
            sp.set_defaults(func=lambda a, exc=exc: _unavailable(exc))
            continue
        mod.register(sub)
    return p


def _unavailable(exc: Exception) -> int:
    print(f"pih: this command is unavailable: {exc}", file=sys.stderr)
    return 2


def emit(args, payload: dict, human) -> None:
    """Print ``payload`` as one JSON document (``--format json``) or call ``human()`` for the table."""
    if getattr(args, "format", "table") == "json":
        json.dump(payload, sys.stdout, indent=2, default=_json_default, allow_nan=True)
        sys.stdout.write("\n")
    else:
        human()


def _json_default(o):
    from .records import _json_default as record_default

    try:
        return record_default(o)
    except TypeError:
        return str(o)


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="table (default) or json: one JSON document on stdout")


def add_ratio_base(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=float, default=16.0, help="ratio convention C_Q(b) = BASE/b (default 16)")


def ratio_from_args(args):
    """The compression-ratio convention C_Q(b) = BASE/b chosen by ``--base``."""
    import numpy as np

    from .validate import check_number

    base = check_number("--base", args.base, positive=True)
    return lambda b: base / np.asarray(b, dtype=float)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _split_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command line without its ``--plugin`` options, the plugins they name), before or after the subcommand."""
    rest, refs, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--plugin":
            if i + 1 >= len(argv):
                raise PihError("--plugin needs a module name or a .py file")
            refs.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--plugin="):
            refs.append(a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    return rest, refs


def load_plugins(argv: list[str]) -> list[str]:
    """Load the entry-point plugins and every ``--plugin`` of the command line (before or after the subcommand),
    before the parser is built: a plugin's methods and assumption sets must be known to every subcommand. Returns
    the command line without the ``--plugin`` options."""
    from . import registry

    rest, refs = _split_plugins(argv)
    registry.load_entry_points()
    for ref in refs:
        registry.load_plugin(ref)
    return rest


SIMULATION_COMMANDS = {"simulate", "compare", "report"}  # the commands that run the JAX simulation


def command_of(argv: list[str]) -> str | None:
    """The subcommand of a command line: its first word that is neither an option nor a ``--plugin`` value."""
    return next((a for a in _split_plugins(argv)[0] if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run the ``pih`` command. Every error a user can cause ends in one line on stderr and a non-zero exit."""
    command_line = argv is None  # the command itself, not a call from Python
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if command_line and command_of(argv) in SIMULATION_COMMANDS:  # huge pages for XLA's buffers
            from . import hugepages  # (pih.hugepages), decided before any plugin is imported: it may start again

            hugepages.ensure()
        argv = load_plugins(argv)
    except PihError as exc:
        print(f"pih: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    name = f"pih {args.command}"
    shown: set[str] = set()
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PihWarning):
            text = _one_line(message)
            if text not in shown:
                shown.add(text)
                print(f"{name}: warning: {text}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", PihWarning)
        warnings.showwarning = show
        try:
            rc = int(args.func(args) or 0)
            sys.stdout.flush()
            return rc
        except Interrupted as exc:
            print(f"{name}: {_one_line(exc)}", file=sys.stderr)
            return exc.exit_code
        except PihError as exc:
            print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"{name}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            with contextlib.suppress(OSError):  # no second error when Python flushes stdout at exit
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            print(f"{name}: output closed before the end (broken pipe)", file=sys.stderr)
            return EXIT_PIPE
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            print(f"{name}: error: {_one_line(exc.strerror or exc)}{where}", file=sys.stderr)
            return EXIT_USER
        except MemoryError:
            print(f"{name}: error: out of memory (try a smaller model, grid or --eval-tokens)", file=sys.stderr)
            return EXIT_USER
        except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback on request
            if os.environ.get("PIH_TRACEBACK"):
                raise
            print(f"{name}: internal error: {type(exc).__name__}: {_one_line(exc)} (set PIH_TRACEBACK=1 to see "
                  "the traceback)", file=sys.stderr)
            return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
