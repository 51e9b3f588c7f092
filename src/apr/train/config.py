"""Training configuration: YAML/TOML files mapped onto dataclasses, `--set key=value` overrides.

Every key is checked against the dataclass fields and typed by the field's own type
before any work starts; unknown keys and wrong types are `UserError`s.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from apr.errors import UserError


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
    tokenizer: str = "apr"  # "apr" builds ours; else a folder or hub name (any HF tokenizer)
    max_steps: int = 1000  # optimizer steps (the learning-rate schedule ends here)
    # > 0: fit training into this many seconds. After a few timed steps, max_steps is lowered
    # so that the run (and its cosine schedule) ends within the budget; the resolved value is
    # written to config.yaml. Resuming re-plans the rest, so pass that max_steps for exactness.
    time_budget_s: float = 0.0
    batch_size: int = 32  # rows of `context` tokens per optimizer step, over all processes
    grad_accum: int = 1  # micro-batches per process per step
    context: int = 1024  # row length; longer documents are dropped
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    # How packed rows keep documents apart: sdpa (dense block-diagonal mask), flex_attention
    # (block-sparse: skips blocks across documents; CUDA for training, compiles on first use),
    # flash_attention_2 (varlen; needs the flash-attn package), eager.
    attn_implementation: str = "sdpa"
    train_on_inserted: bool = False  # also train on join text the runtime inserts (published)
    token_budget: bool = False  # SoS+: prefix `Token Budget: N ` (N from the trace's length)
    sub_call_budget: bool = False  # APR: prefix `Sub Call Budget: N ` (N = child threads)
    eval_problems: str = ""  # problems training must not overlap; "" = the shared validation set
    val_fraction: float = 0.01  # share of records held out for validation loss
    eval_every: int = 200  # steps between validation losses; 0 = only at the end
    eval_batches: int = 10  # validation batches (of batch_size rows) per evaluation
    log_every: int = 10
    save_every: int = 500  # steps between checkpoints; 0 = none
    keep_checkpoints: int = 2
    max_shard_size: str = "5GB"
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        if not self.data:
            raise UserError("config: `data` (the demonstrations file) is required")
        for name in ("max_steps", "batch_size", "grad_accum", "context"):
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value, tp, key: str):
    """`value` as type `tp` (int, float, str, bool, a dataclass, or X | None), else UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config: `{key}` must be a section (a mapping)")
        return _build(tp, value, key + ".")
    if tp is float and isinstance(value, str):  # YAML reads `5e-5` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise UserError(f"config: `{key}` must be {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            raise UserError(f"config: unknown key `{prefix}{k}` (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def _parse_set(item: str, cls) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], value typed by the field a.b of `cls`)."""
    if "=" not in item:
        raise UserError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    tp = cls
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        if part not in fields:
            raise UserError(f"--set: unknown key `{'.'.join(parts[: i + 1])}`")
        tp = typing.get_type_hints(tp)[part]
    if tp is str:
        return parts, raw  # strings are taken verbatim: `--set data=123.jsonl`
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_config(path: str | Path | None, overrides: list[str] = (), cls=SFTConfig):
    """Read a YAML or TOML config, apply `--set` overrides, and validate it."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("no such config file", str(path))
        text = path.read_text(encoding="utf-8")
        try:
            values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"invalid config: {str(e).splitlines()[0]}", str(path)) from None
        values = values or {}
        if not isinstance(values, dict):
            raise UserError("config must be a mapping of keys to values", str(path))
    for item in overrides:
        parts, value = _parse_set(item, cls)
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    config = _build(cls, values)
    config.validate()
    return config


def dump_config(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
