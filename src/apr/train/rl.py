"""`apr train rl --config FILE [--set key=value]... [--resume]`: GRPO over spawn/join rollouts.

This module is the config and the command only (it imports no torch, so `apr --help` stays
fast); the trainer is `apr.train.grpo`, the loss `apr.train.rl_loss`. See docs/rl.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from apr.errors import UserError

REWARDS = ("binary", "format", "partial")


@dataclass
class RLConfig:
    """`apr train rl`: end-to-end RL (GRPO) from a supervised model. Defaults: published."""

    init: str = ""  # the supervised model folder (its apr.json says method and prefixes)
    out_dir: str = "runs/rl"
    problems: str = ""  # training problems (`apr data problems`); must not overlap val_problems
    val_problems: str = ""  # "" = the shared 1,000-problem validation set
    max_steps: int = 150
    batch_size: int = 64  # problems per step, over all processes
    group_size: int = 5  # samples per problem (G)
    lr: float = 1e-5  # constant after warmup
    # Steps of linear warmup from lr/warmup_steps. Adam's first updates move every weight by
    # ~lr whatever its gradient, and a sharp (low-entropy) small model can lose 10 nats on a
    # sampled token from one such step at lr 1e-4: warmup keeps those first steps small.
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    clip: float = 0.2  # PPO ratio clip
    kl_coef: float = 0.001  # k3 KL to the frozen initial model
    inner_steps: int = 2  # optimizer steps per batch of rollouts
    adv_eps: float = 1e-4
    skip_zero_advantage: bool = False  # drop all-equal groups from learning (saves compute; drops their KL term)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    method: str = ""  # apr | sos; "" = the model's apr.json
    sub_call_budget: int | None = None  # APR `Sub Call Budget: N`; None = 10 if the model was trained with it
    context: int = 4096  # tokens per thread during rollouts
    max_children: int = 16
    max_total_tokens: int = 200_000  # per rollout
    max_in_flight: int = 64  # problems rolled out at once (x group_size samples each)
    engine: str = "local"  # local | server
    server: str = ""  # engine=server: OpenAI-compatible URL that reloads weights (apr serve, SGLang)
    served_model: str = ""
    max_slots: int = 64  # local engine: sequences decoded together
    rollout_dtype: str = "auto"  # local engine weights: auto (bf16 on GPU) | float32 | bfloat16
    reward: str = "binary"  # binary | format | partial | module:function
    eval_every: int = 10  # steps between validation accuracies (greedy); 0 = only at the end
    eval_at_start: bool = True
    val_limit: int = 200  # validation problems per evaluation
    save_every: int = 10  # steps between checkpoints; 0 = none
    keep_checkpoints: int = 2
    micro_tokens: int = 16384  # padded tokens per learner forward
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # learner: auto (bf16 autocast on GPU) | float32 | bfloat16

    def validate(self) -> None:
        if not self.init:
            raise UserError("config: `init` (the supervised model folder) is required")
        if not self.problems:
            raise UserError("config: `problems` (training problems) is required")
        for name in ("max_steps", "batch_size", "group_size", "inner_steps", "context", "max_slots", "micro_tokens", "val_limit"):
            if getattr(self, name) < 1:
                raise UserError(f"config: `{name}` must be >= 1")
        if self.group_size < 2:
            raise UserError("config: `group_size` must be >= 2 (advantages are relative to the group)")
        if self.method not in ("", "apr", "sos"):
            raise UserError("config: `method` must be apr, sos or empty (from the model)")
        if self.engine not in ("local", "server"):
            raise UserError("config: `engine` must be local or server")
        if self.engine == "server" and not self.server:
            raise UserError("config: engine=server needs `server` (the server URL)")
        if self.reward not in REWARDS and ":" not in self.reward:
            raise UserError(f"config: `reward` must be one of {', '.join(REWARDS)} or module:function")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise UserError("config: RL samples: temperature > 0, 0 < top_p <= 1, top_k >= 0")
        if self.warmup_steps < 0:
            raise UserError("config: `warmup_steps` must be >= 0")
        if not 0 < self.clip < 1 or self.kl_coef < 0 or self.lr <= 0:
            raise UserError("config: need 0 < clip < 1, kl_coef >= 0, lr > 0")
        if self.dtype not in ("auto", "float32", "bfloat16") or self.rollout_dtype not in ("auto", "float32", "bfloat16"):
            raise UserError("config: `dtype`/`rollout_dtype` must be auto, float32 or bfloat16")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def register_rl(train_subparsers) -> None:
    p = train_subparsers.add_parser(
        "rl",
        help="end-to-end RL (GRPO) over parent and child threads",
        description="GRPO from a supervised model: rollouts through the spawn/join runtime, every thread "
        "segment trained with its rollout's advantage. Run under `torchrun` for data parallel.",
    )
    p.add_argument("--config", required=True, help="YAML or TOML config (see configs/rl_*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key; repeatable")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/latest")
    p.set_defaults(func=run_rl)


def run_rl(args: argparse.Namespace) -> int:
    from apr.train.config import load_config

    config = load_config(args.config, args.set, cls=RLConfig)  # bad keys fail before torch loads
    from apr.train.grpo import train_rl

    print(train_rl(config, resume=args.resume))
    return 0
