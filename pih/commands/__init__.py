"""Subcommands of ``pih``: each module has ``register(subparsers)``; heavy imports happen inside ``func``."""

COMMANDS = ["simulate", "run", "train", "cer", "records", "report"]
