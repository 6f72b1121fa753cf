"""Subcommands of ``pih``: each module has ``register(subparsers)``; heavy imports happen inside ``func``."""

COMMANDS = ["simulate", "run", "train", "analyze", "cer", "records", "report", "compare", "advise"]
