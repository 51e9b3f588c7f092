"""Training configuration: YAML/TOML files mapped onto dataclasses, `--set key=value` overrides.

`SFTConfig` (with its `OptimConfig` section) configures `apr train sft`, `RLConfig` (with
its `rollout` section, the runtime's `RuntimeConfig`) configures `apr train rl`. This module
imports no torch, so the command line can refuse a bad config before the trainers load.
Keys an earlier version named otherwise (a class's RENAMED) are still read, with a warning.
How files become these dataclasses (checked keys, typed values, overrides):
`apr.train.config_files`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from apr.device import DEVICE_NAMES, is_device_name
from apr.errors import UserError
from apr.model_folder import PRESETS
from apr.runtime_config import RuntimeConfig
from apr.train.config_files import load_dataclass


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to `min_lr`."""

    lr: float = 3e-4  # peak learning rate
    min_lr: float = 3e-5  # cosine floor, reached at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only (not norms or biases)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class SFTConfig:
    """`apr train sft`: supervised training on search demonstrations."""

    data: str = ""  # demonstrations JSONL (`apr data traces` output or published SFT records)
    model: str = "tiny"  # preset: tiny | small | paper
    out_dir: str = "runs/sft"
    # apr (a token per digit) | apr-num99 | apr-num999 (numbers in right-aligned chunks of 2 | 3
    # digits, apr.tokenizer) build ours; else a folder or hub name (any HF tokenizer)
    tokenizer: str = "apr"
    max_steps: int = 1000  # optimizer steps (the learning-rate schedule ends here)
    # > 0: fit training into this many seconds. After a few timed steps, max_steps is lowered
    # so that the run (and its cosine schedule) ends within the budget; the resolved value is
    # written to config.yaml. Resuming re-plans the rest, so pass that max_steps for exactness.
    time_budget_s: float = 0.0
    # What `time_budget_s` counts: wall (seconds on the clock) | cpu (this process's CPU
    # seconds: a budget that other jobs sharing the machine do not eat; probes use it).
    time_budget_clock: str = "wall"
    batch_size: int = 32  # rows of `context` tokens per optimizer step, over all processes
    grad_accum: int = 1  # micro-batches per process per step
    context: int = 1024  # row length; longer documents are dropped
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    # A model folder to start from instead of random weights (same preset, tokenizer and
    # method): a new run on new data continues what an earlier one learned.
    init: str = ""
    # How packed rows keep documents apart: sdpa (dense block-diagonal mask), flex_attention
    # (block-sparse: skips blocks across documents; CUDA for training, compiles on first use),
    # flash_attention_2 (varlen; needs the flash-attn package), eager.
    attn_implementation: str = "sdpa"
    train_on_inserted: bool = False  # also train on join text the runtime inserts (published)
    # Prefix each demonstration with its budget: APR `Sub Call Budget: N ` (N = child threads),
    # SoS+ `Token Budget: N ` (N from the trace's length). The model's apr.json records it.
    budget_prefix: bool = False
    # > 0: add documents of arithmetic facts, `Exploring Operation: a*b=c` lines with results of
    # 3+ digits drawn from the training demonstrations (where small models err), worth this
    # share of the demonstrations' characters (apr.train.packing.arithmetic_facts).
    arithmetic_facts: float = 0.0
    # Facts are drawn from the operations whose result is at least this. 100 (3+ digits) aims
    # at the large products a small SoS+ model gets wrong; 0 draws from every operation, in
    # proportion to how often the demonstrations write it (the small results APR children
    # get wrong on the path to the answer).
    arithmetic_facts_min_result: int = 100
    # > 0: add this many node drills per demonstration (0.5: one for every two): a trace cut at
    # a move, with another generated node named, and that node's state line, the only part
    # trained (apr.train.drills). For models that copy the heuristically best node's state
    # whatever id they wrote (the CPU line's SoS+ models, issue 17).
    node_drills: float = 0.0
    # > 0: add this many goal drills per demonstration: last operations and their goal lines
    # for a target equal to the result or a near miss, only the verdict trained
    # (apr.train.drills). For models whose children claim `equal: Goal Reached` for a result
    # beside the target (the CPU line's APR models, issue 17).
    goal_drills: float = 0.0
    # > 0: add this many product drills per demonstration: `Exploring Operation: a*b=c` lines
    # for the 3+ digit products the demonstrations write, only c's digits trained
    # (apr.train.drills). Products are most of the CPU line's arithmetic errors (issue 17).
    product_drills: float = 0.0
    # Product drill lines as the trace has them: after the `Current State` line they were
    # explored from, with their `Resulting Numbers` (context, untrained); false: bare lines.
    product_drills_in_state: bool = False
    eval_problems: str = ""  # problems training must not overlap; "" = the shared validation set
    val_fraction: float = 0.01  # share of records held out for validation loss
    eval_every: int = 200  # steps between validation losses; 0 = only at the end
    eval_batches: int = 10  # validation batches (of batch_size rows) per evaluation
    log_every: int = 10
    save_every: int = 500  # steps between checkpoints; 0 = none
    keep_checkpoints: int = 2
    max_shard_size: str = "5GB"
    optim: OptimConfig = field(default_factory=OptimConfig)

    # Keys of earlier versions, still read with a deprecation warning: old -> new.
    RENAMED: ClassVar[dict[str, str]] = {"sub_call_budget": "budget_prefix", "token_budget": "budget_prefix"}

    def validate(self) -> None:
        if not self.data:
            raise UserError("config: `data` (the demonstrations file) is required")
        if self.model not in PRESETS:
            raise UserError(f"config: `model` must be a preset ({', '.join(PRESETS)}), got {self.model!r}")
        positions = PRESETS[self.model][4]
        if self.context > positions:
            raise UserError(f"config: `context` {self.context} is more than the {self.model} preset's {positions} "
                            "positions")
        for name in ("max_steps", "batch_size", "grad_accum", "context", "log_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"config: `{name}` must be >= 1")
        if self.attn_implementation not in ("sdpa", "flex_attention", "flash_attention_2", "eager"):
            raise UserError("config: `attn_implementation` must be sdpa, flex_attention, flash_attention_2 or eager")
        if self.time_budget_s < 0:
            raise UserError("config: `time_budget_s` must be >= 0")
        if not 0 <= self.val_fraction < 1:
            raise UserError("config: `val_fraction` must be in [0, 1)")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UserError("config: `dtype` must be auto, float32 or bfloat16")
        if self.time_budget_clock not in ("wall", "cpu"):
            raise UserError("config: `time_budget_clock` must be wall or cpu")
        if self.time_budget_clock != "wall" and not self.time_budget_s:
            raise UserError("config: `time_budget_clock` applies to a time budget; `time_budget_s` is 0 (none)")
        if not 0 <= self.arithmetic_facts <= 10:
            raise UserError("config: `arithmetic_facts` must be in [0, 10]")
        if self.arithmetic_facts_min_result < 0:
            raise UserError("config: `arithmetic_facts_min_result` must be 0 or more")
        if self.arithmetic_facts_min_result != 100 and not self.arithmetic_facts:
            raise UserError("config: `arithmetic_facts_min_result` applies to arithmetic facts; `arithmetic_facts` is 0 (none)")
        if not 0 <= self.node_drills <= 10:
            raise UserError("config: `node_drills` must be in [0, 10]")
        if not 0 <= self.goal_drills <= 10:
            raise UserError("config: `goal_drills` must be in [0, 10]")
        if not 0 <= self.product_drills <= 10:
            raise UserError("config: `product_drills` must be in [0, 10]")
        if self.product_drills_in_state and not self.product_drills:
            raise UserError("config: `product_drills_in_state` applies to product drills; `product_drills` is 0 (none)")
        drilled = [k for k in ("node_drills", "goal_drills", "product_drills") if getattr(self, k)]
        if drilled and self.train_on_inserted:
            # a drill's context is marked as inserted text; trained, the drill would teach its context
            raise UserError(f"config: `{drilled[0]}` needs `train_on_inserted: false` (a drill trains only its answer)")
        if not is_device_name(self.device):
            raise UserError(f"config: `device` must be {DEVICE_NAMES}, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Rewards built into the GRPO trainer (apr.train.rewards.REWARD_FNS); any other `reward` names
# code, `path/to/file.py:function` or `module:function`, which runs only when the config says
# `trust_reward_code: true` (and, for a module, APR_REWARD_MODULES lists it): docs/serving.md.
REWARDS = ("binary", "format", "partial", "checked")
REWARD_MODULES_ENV = "APR_REWARD_MODULES"


def reward_modules() -> list[str]:
    """The modules (or packages) a `module:function` reward may come from: the comma-separated
    APR_REWARD_MODULES of whoever runs the training, never the config itself."""
    return [m.strip() for m in os.environ.get(REWARD_MODULES_ENV, "").split(",") if m.strip()]


def reward_source(name: str, trusted: bool) -> tuple[str, str, str]:
    """Where a `reward` comes from: ("builtin", name, ""), ("file", path, function) or
    ("module", module, function); UserError when it may not run or cannot be a reward."""
    if name in REWARDS:
        return "builtin", name, ""
    choose = (f"one of {', '.join(REWARDS)}, or code: path/to/file.py:function or module:function "
              "(with `trust_reward_code: true`)")
    target, sep, fn = name.rpartition(":")
    if not sep or not target or not fn.isidentifier():
        raise UserError(f"config: `reward` must be {choose}, got {name!r}")
    if not trusted:
        raise UserError(f"config: reward {name!r} names code to run; set `trust_reward_code: true` if you trust "
                        "it (a config that names code is code: docs/serving.md, trust model)")
    if target.endswith(".py"):
        return "file", target, fn
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", target):
        raise UserError(f"config: reward {name!r}: {target!r} is neither a .py file nor a module name")
    allowed = reward_modules()
    if not any(target == m or target.startswith(m + ".") for m in allowed):
        listed = ", ".join(allowed) if allowed else "empty"
        raise UserError(f"config: reward module {target!r} is not allowed ({REWARD_MODULES_ENV} is {listed}): "
                        f"add it to {REWARD_MODULES_ENV}, or name a file: path/to/file.py:{fn}")
    return "module", target, fn


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
    # How rollouts run (method, window, budgets, join rule, sampling, in flight): the settings
    # of `apr eval`, section `rollout:`. Unset ones come from the model's apr.json; the
    # temperature defaults to 1.0. Seeds come from `seed` and the step, not `rollout.seed`.
    rollout: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine: str = "local"  # local | server
    server: str = ""  # engine=server: OpenAI-compatible URL that reloads weights (apr serve, SGLang)
    served_model: str = ""
    max_slots: int = 64  # local engine: sequences decoded together
    rollout_dtype: str = "auto"  # local engine weights: auto (bf16 on GPU) | float32 | bfloat16
    reward: str = "binary"  # binary | format | partial | checked | path/to/file.py:function | module:function
    trust_reward_code: bool = False  # let `reward` name code (the config then runs code: docs/serving.md)
    eval_every: int = 10  # steps between validation accuracies (greedy); 0 = only at the end
    eval_at_start: bool = True
    val_limit: int = 200  # validation problems per evaluation
    save_every: int = 10  # steps between checkpoints; 0 = none
    keep_checkpoints: int = 2
    micro_tokens: int = 16384  # padded tokens per learner forward
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # learner: auto (bf16 autocast on GPU) | float32 | bfloat16

    # The rollout settings were top-level keys before the `rollout:` section: old -> new.
    RENAMED: ClassVar[dict[str, str]] = {
        **{k: f"rollout.{k}" for k in ("method", "context", "max_children", "max_total_tokens", "temperature",
                                       "top_k", "top_p", "max_in_flight")},
        "sub_call_budget": "rollout.child_budget",
    }

    def validate(self) -> None:
        if not self.init:
            raise UserError("config: `init` (the supervised model folder) is required")
        if not self.problems:
            raise UserError("config: `problems` (training problems) is required")
        for name in ("max_steps", "batch_size", "group_size", "inner_steps", "max_slots", "micro_tokens", "val_limit",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise UserError(f"config: `{name}` must be >= 1")
        if self.group_size < 2:
            raise UserError("config: `group_size` must be >= 2 (advantages are relative to the group)")
        if self.rollout.temperature is not None and self.rollout.temperature <= 0:
            raise UserError("config: `rollout.temperature` must be > 0: the samples of a group must differ")
        if self.rollout.seed != 0:
            raise UserError("config: `rollout.seed` is not used: rollouts draw their seeds from `seed` and the step")
        if self.engine not in ("local", "server"):
            raise UserError("config: `engine` must be local or server")
        if self.engine == "server" and not self.server:
            raise UserError("config: engine=server needs `server` (the server URL)")
        # Settings of the other engine are refused, not ignored.
        others = ("server", "served_model") if self.engine == "local" else ("max_slots", "rollout_dtype")
        for name in others:
            if getattr(self, name) != getattr(RLConfig, name):
                raise UserError(f"config: `{name}` applies to engine={'server' if self.engine == 'local' else 'local'} "
                                f"only; this run's engine is {self.engine}")
        reward_source(self.reward, self.trust_reward_code)
        if self.warmup_steps < 0:
            raise UserError("config: `warmup_steps` must be >= 0")
        if not 0 < self.clip < 1 or self.kl_coef < 0 or self.lr <= 0:
            raise UserError("config: need 0 < clip < 1, kl_coef >= 0, lr > 0")
        if self.dtype not in ("auto", "float32", "bfloat16") or self.rollout_dtype not in ("auto", "float32", "bfloat16"):
            raise UserError("config: `dtype`/`rollout_dtype` must be auto, float32 or bfloat16")
        if not is_device_name(self.device):
            raise UserError(f"config: `device` must be {DEVICE_NAMES}, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: list[str] = (), cls=SFTConfig):
    """Read a YAML or TOML config of `cls` (`apr train sft` by default), apply `--set`
    overrides, and validate it (`config_files.load_dataclass`)."""
    return load_dataclass(cls, path, overrides)
