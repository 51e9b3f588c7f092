"""`apr pipeline --preset cpu|gpu`: the recipes end to end (see `apr.pipeline`)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import apr.pipeline
from apr.errors import UserError
from apr.pipeline import PRESETS, STAGES, Preset, run_pipeline


def preset_from_args(args) -> Preset:
    p = PRESETS[args.preset]
    over = {k: getattr(args, k) for k in ("train_problems", "steps", "batch_size", "context", "eval_limit", "cons_n",
                                           "cons_limit", "workers", "model", "max_in_flight", "num_count", "eval_context", "train_seconds", "attn")
            if getattr(args, k) is not None}
    if args.compile:
        over["compile"] = True
    if args.budgets is not None:
        over["budgets"] = [int(b) for b in args.budgets.split(",") if b.strip()]
    p = dataclasses.replace(p, **over)
    if p.num_count != 4 and not p.val_problems:  # the packaged set is Countdown-4 only
        p = dataclasses.replace(p, val_problems=500)
    for k in ("train_problems", "steps", "batch_size", "context", "eval_limit", "cons_limit", "cons_n"):
        if getattr(p, k) < 1:
            raise UserError(f"--{k.replace('_', '-')} must be >= 1")
    if p.train_seconds < 0:
        raise UserError("--train-seconds must be >= 0")
    return p


def cmd_pipeline(args) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else list(STAGES[:4]) + (["export"] if args.export else [])
    p = preset_from_args(args)
    out = Path(args.out or f"runs/pipeline_{args.preset}")
    command = "apr pipeline " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["pipeline"] else "apr pipeline (from Python)"
    run_pipeline(args.preset, p, out, stages, args.seed, args.device, Path(args.export) if args.export else None, command)
    return 0


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="problems, demonstrations, APR and SoS+ training, evaluation, report",
                       description=apr.pipeline.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--out", help="default runs/pipeline_PRESET")
    p.add_argument("--stages", help=f"comma list of {','.join(STAGES)} (default: all but export; export too with --export)")
    p.add_argument("--export", help="write bf16 HF copies: DIR (APR) and DIR-sos (SoS+), e.g. models/default")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("sizing (override the preset)")
    for name, help_ in (("num-count", "numbers per problem"), ("train-problems", "training problems"),
                        ("steps", "optimizer steps per model"), ("batch-size", "rows per step"),
                        ("context", "row length = evaluation context window"), ("eval-limit", "validation problems, greedy runs"),
                        ("cons-n", "SoS+ samples per problem"), ("cons-limit", "validation problems, sampled run"),
                        ("eval-context", "evaluation context window (default: --context)"),
                        ("workers", "processes for demonstrations"), ("max-in-flight", "samples decoding at once")):
        g.add_argument(f"--{name}", type=int, help=help_)
    g.add_argument("--model", help="model preset (cpu-mini, tiny, gpu-10m, small, paper)")
    g.add_argument("--train-seconds", type=float, help="APR trains this long (at most --steps); SoS+ as many steps")
    g.add_argument("--attn", choices=["sdpa", "flex_attention", "flash_attention_2", "eager"],
                   help="training attention (default sdpa; flex_attention skips cross-document blocks, GPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training model")
    g.add_argument("--budgets", help="APR child budgets to sweep, e.g. 2,4,8 ('' for none)")
    p.set_defaults(func=cmd_pipeline)
