"""``pih train MODEL``: train the project's small offline models (seeded, cached)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the project's tiny offline models (seeded, cached)",
                              description="Train a tiny model on an offline data set; skipped when cached.")
    p.add_argument("model", help="which model: tiny-llama | tiny-deit | tiny-resnet, optionally with its data and "
                   "steps as in model sources (tiny-resnet:fashion-mnist, tiny-deit:digits:300)")
    p.add_argument("--data", default=None,
                   help="tiny-llama: kjv (default) | pydoc | a local text file; tiny-deit, tiny-resnet: digits "
                   "(default) | fashion-mnist (Debian package dataset-fashion-mnist)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the model's default)")
    p.add_argument("--cache", default=None, help="cache folder (default $PIH_CACHE or ~/.cache/pih)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import shutil

    from pih.validate import check_int, check_seed, check_threads

    check_seed("--seed", args.seed)  # before anything is trained (a negative seed fails only at the end)
    check_threads("--threads", args.threads)
    if args.steps is not None:
        check_int("--steps", args.steps, 1)
    import torch  # noqa: F401 - loaded before the thread policy applies to it

    from pih.bridge.train import tiny_deit_folder, tiny_llama_folder, tiny_resnet_folder
    from pih.errors import PihError, bad

    fns = {"tiny-llama": tiny_llama_folder, "tiny-deit": tiny_deit_folder, "tiny-resnet": tiny_resnet_folder}
    name, *rest = args.model.split(":")
    if name not in fns or len(rest) > 2:
        raise bad("model", args.model, f"must be one of {tuple(fns)}, optionally followed by :data[:steps]")
    data, steps = (rest[0] or None) if rest else None, args.steps
    if len(rest) == 2:
        if not rest[1].isdigit() or int(rest[1]) < 1:
            raise bad("model", args.model, "the steps in model:data:steps must be a positive integer")
        if args.steps is not None and args.steps != int(rest[1]):
            raise bad("steps", args.steps, f"conflicts with the steps in {args.model}")
        steps = int(rest[1])
    if data and args.data and data != args.data:
        raise bad("data", args.data, f"conflicts with the data in {args.model}")
    from ..threads import set_threads

    set_threads(args.threads)
    fn = fns[name]
    data = data or args.data or ("kjv" if name == "tiny-llama" else "digits")
    try:  # already trained? (the folder functions raise a PihError when nothing is cached)
        cached_folder = fn(data, args.seed, args.cache, steps)
    except PihError:
        cached_folder = None
    if args.force and cached_folder is not None:
        shutil.rmtree(cached_folder, ignore_errors=True)
        cached_folder = None
    folder = fn(data, args.seed, args.cache, steps, train_if_missing=True)
    info = json.loads((folder / "train_info.json").read_text())
    info["folder"] = str(folder)
    info["cached"] = cached_folder is not None  # "seconds" is always the training's own time, cached or not
    if args.format == "json":
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{folder}\n{summary_line(info, (folder / 'train_info.json').stat().st_mtime)}")
    return 0


def summary_line(info: dict, trained_at: float | None = None) -> str:
    """One line on a trained model (its train_info.json, plus ``cached``): what it is, and whether it was just
    trained or taken from the cache (then when it was trained; --force retrains)."""
    import time

    extra = f"  test accuracy {info['test_accuracy']:.3f}" if "test_accuracy" in info else ""
    head = (f"  data {info.get('corpus') or info.get('data')}  seed {info['seed']}  params {info['n_params']}  "
            f"final loss {info['final_loss']:.3f}{extra}")
    took = f"{info['seconds']:.0f} s"
    if info.get("cached"):
        when = f" on {time.strftime('%Y-%m-%d %H:%M', time.localtime(trained_at))}" if trained_at else ""
        return f"{head}\n  cached: not retrained (trained{when} in {took}; --force retrains)"
    return f"{head}\n  trained now in {took}"
