"""`apr pipeline --preset cpu|gpu`: the recipes end to end (see `apr.pipeline`)."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path

import apr.pipeline
from apr.commands.options import (
    HelpFormatter,
    add_deprecated_alias,
    add_quiet,
    context_tokens,
    device,
    int_in,
    int_list,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from apr.errors import UserError
from apr.model_folder import PRESETS as MODEL_PRESETS
from apr.pipeline import PRESETS, STAGES, Preset, run_pipeline


def preset_from_args(args) -> Preset:
    p = PRESETS[args.preset]
    over = {k: getattr(args, k) for k in ("train_problems", "steps", "batch_size", "context", "eval_limit", "cons_n",
                                           "cons_limit", "workers", "max_in_flight", "num_count", "eval_context",
                                           "train_seconds", "attn", "dtype") if getattr(args, k) is not None}
    if args.model_preset is not None:
        over["model"] = args.model_preset
    if args.compile:
        over["compile"] = True
    if args.budgets is not None:
        over["budgets"] = args.budgets
    p = dataclasses.replace(p, **over)
    if p.num_count != 4 and not p.val_problems:  # the packaged set is Countdown-4 only
        p = dataclasses.replace(p, val_problems=500)
    return p


def cmd_pipeline(args) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else list(STAGES[:4]) + (["export"] if args.export else [])
    if args.export and "export" not in stages:
        raise UserError(f"--export names a folder, but --stages {args.stages} has no export stage: add it, or drop "
                        "--export")
    p = preset_from_args(args)
    out = Path(args.out or f"runs/pipeline_{args.preset}")
    command = "apr pipeline " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["pipeline"] else "apr pipeline (from Python)"
    run_pipeline(args.preset, p, out, stages, args.seed, args.device, Path(args.export) if args.export else None, command,
                 progress=not args.quiet)
    return 0


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="all steps at once: data, training, evaluation, report",
                       description=apr.pipeline.__doc__, formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True,
                   help="recipe: cpu (Countdown-3, a 0.6M model, hours on a CPU) or gpu (Countdown-4, one H100/H200)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/pipeline_PRESET)")
    p.add_argument("--stages", metavar="LIST", help=f"comma list of {','.join(STAGES)} (default: all but export; export too with --export)")
    p.add_argument("--export", metavar="DIR",
                   help="write bf16 HF copies: DIR (APR) and DIR-sos (SoS+), e.g. models/default")
    p.add_argument("--device", type=device, default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of problems, solvers and training")
    add_quiet(p)
    g = p.add_argument_group("sizing (override the preset; defaults: the preset's)")
    for name, type_, help_ in (
            ("num-count", int_in(2, 6), "numbers per problem, 2..6"),
            ("train-problems", positive_int, "training problems"),
            ("steps", positive_int, "optimizer steps per model"),
            ("batch-size", positive_int, "rows per step"),
            ("context", context_tokens, "training row length in tokens = evaluation context window"),
            ("eval-limit", positive_int, "validation problems of the greedy runs"),
            ("cons-n", positive_int, "SoS+ samples per problem (cons@N)"),
            ("cons-limit", positive_int, "validation problems of the sampled run"),
            ("eval-context", context_tokens, "evaluation context window in tokens (default: --context)"),
            ("workers", positive_int, "processes making demonstrations"),
            ("max-in-flight", positive_int, "samples decoding at once")):
        g.add_argument(f"--{name}", type=type_, help=help_)
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="training precision "
                   "(default: the preset's, bfloat16 for gpu)")
    g.add_argument("--model-preset", choices=sorted(MODEL_PRESETS), help="model size (a preset of apr.model_folder)")
    g.add_argument("--train-seconds", type=non_negative_float,
                   help="APR trains this many seconds (at most --steps; 0: no limit); SoS+ as many steps")
    g.add_argument("--attn", choices=["sdpa", "flex_attention", "flash_attention_2", "eager"],
                   help="training attention (default sdpa; flex_attention skips cross-document blocks, GPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training model")
    g.add_argument("--budgets", type=int_list, metavar="LIST", help="APR child budgets to sweep, e.g. 2,4,8 ('' for none)")
    add_deprecated_alias(p, "--model", "--model-preset")
    p.set_defaults(func=cmd_pipeline)
