"""Subcommands of ``pih``: each module has ``register(subparsers)``."""

COMMANDS = ["cer", "records", "report"]
