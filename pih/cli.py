"""The ``pih`` command. Subcommands live in ``pih/commands/<name>.py`` and are listed in ``COMMANDS``."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__
from .commands import COMMANDS
from .errors import PihError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pih",
        description="Which goes first, pruning or quantization? Measure the order advantage A(Q->P), the "
        "compression equivalent ratios, and check the theory on simulated and real weights.",
    )
    p.add_argument("--version", action="version", version=f"pih {__version__}")
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

    if args.base <= 0:
        raise PihError(f"--base={args.base!r}: must be positive")
    return lambda b: args.base / np.asarray(b, dtype=float)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PihError as exc:
        print(f"pih {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
