"""`apr train sft --config FILE [--set key=value]... [--resume]`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train models")
    sub = train.add_subparsers(dest="train_command", metavar="STAGE")
    sub.required = True
    sft = sub.add_parser(
        "sft",
        help="supervised training on search demonstrations",
        description="Supervised training on search demonstrations. Run under `torchrun` for data parallel.",
    )
    sft.add_argument("--config", required=True, help="YAML or TOML config (see configs/)")
    sft.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for sections, e.g. optim.lr=1e-4); repeatable",
    )
    sft.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/latest")
    sft.set_defaults(func=run_sft)
    from apr.train.rl import register_rl  # light module: torch loads when the command runs

    register_rl(sub)


def run_sft(args: argparse.Namespace) -> int:
    from apr.train.config import load_config

    config = load_config(args.config, args.set)  # refuses bad keys before importing torch
    from apr.train.sft import train_sft

    final = train_sft(config, resume=args.resume)
    print(final)
    return 0
