"""`apr train sft|rl --config FILE [--set key=value]... [--resume]`: supervised training
(`apr.train.sft`) and GRPO (`apr.train.grpo`). Configs are read and checked before torch
loads, so a bad key fails fast."""

from __future__ import annotations

import argparse

from apr.commands.options import add_quiet, key_value
from apr.train.checkpoint import check_run_folder


def add_run_folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/latest (a run that has "
                   "no final model yet)")
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT_DIR that holds a finished run or "
                   "checkpoints: its final model and checkpoints are deleted once the new run has started "
                   "(without it such a folder is refused, untouched)")


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model: supervised (sft) or RL (rl)",
                                  description="Train a model from a YAML or TOML config (configs/); "
                                  "`--set key=value` overrides its keys. Run under `torchrun` for data parallel.")
    sub = train.add_subparsers(dest="train_command", metavar="STAGE", title="stages")
    sub.required = True
    sft = sub.add_parser(
        "sft",
        help="supervised training on search demonstrations",
        description="Supervised training on search demonstrations. Run under `torchrun` for data parallel.",
    )
    sft.add_argument("--config", required=True, metavar="FILE", help="YAML or TOML config (see configs/)")
    sft.add_argument(
        "--set",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for sections, e.g. optim.lr=1e-4); repeatable",
    )
    add_run_folder_options(sft)
    add_quiet(sft, "progress bar or status lines")
    sft.set_defaults(func=run_sft)

    rl = sub.add_parser(
        "rl",
        help="end-to-end RL (GRPO) over parent and child threads",
        description="GRPO from a supervised model: rollouts through the spawn/join runtime, every thread "
        "segment trained with its rollout's advantage. Run under `torchrun` for data parallel.",
    )
    rl.add_argument("--config", required=True, metavar="FILE", help="YAML or TOML config (see configs/rl_*.yaml)")
    rl.add_argument("--set", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                    help="override a config key (dotted for sections); repeatable")
    add_run_folder_options(rl)
    add_quiet(rl, "progress bar or status lines")
    rl.set_defaults(func=run_rl)


def run_sft(args: argparse.Namespace) -> int:
    from apr.train.config import load_config

    config = load_config(args.config, args.set)  # refuses bad keys before importing torch
    check_run_folder(config.out_dir, args.resume, args.overwrite)  # and a run folder it may not use
    from apr.train.sft import train_sft

    print(train_sft(config, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite))
    return 0


def run_rl(args: argparse.Namespace) -> int:
    from apr.train.config import RLConfig, load_config

    config = load_config(args.config, args.set, cls=RLConfig)  # refuses bad keys before importing torch
    check_run_folder(config.out_dir, args.resume, args.overwrite)  # and a run folder it may not use
    from apr.train.grpo import train_rl

    print(train_rl(config, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite))
    return 0
