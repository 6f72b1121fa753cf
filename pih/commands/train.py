"""``pih train MODEL``: train the project's small offline models (seeded, cached)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the project's tiny offline models (seeded, cached)",
                              description="Train a tiny model on an offline data set; skipped when cached.")
    p.add_argument("model", choices=("tiny-llama", "tiny-deit"), help="which model")
    p.add_argument("--data", default=None,
                   help="tiny-llama: kjv (default) | pydoc | a local text file; tiny-deit: digits (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the model's default)")
    p.add_argument("--cache", default=None, help="cache folder (default $PIH_CACHE or ~/.cache/pih)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import shutil

    import torch

    from pih.bridge.train import tiny_deit_folder, tiny_llama_folder

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    fn = tiny_llama_folder if args.model == "tiny-llama" else tiny_deit_folder
    data = args.data or ("kjv" if args.model == "tiny-llama" else "digits")
    if args.force:
        try:
            shutil.rmtree(fn(data, args.seed, args.cache, args.steps))
        except Exception:  # noqa: BLE001 - nothing cached yet
            pass
    folder = fn(data, args.seed, args.cache, args.steps, train_if_missing=True)
    info = json.loads((folder / "train_info.json").read_text())
    info["folder"] = str(folder)
    if args.format == "json":
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        extra = f"  test accuracy {info['test_accuracy']:.3f}" if "test_accuracy" in info else ""
        print(f"{folder}\n  data {info.get('corpus') or info.get('data')}  seed {info['seed']}  params "
              f"{info['n_params']}  final loss {info['final_loss']:.3f}{extra}  ({info['seconds']:.0f} s)")
    return 0
