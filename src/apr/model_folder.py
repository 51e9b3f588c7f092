"""Model folders: making a Llama-architecture model from a preset, saving it as a standard
Hugging Face folder, and reading one back (weights, or only what it was trained for).

A saved model folder is an ordinary Hugging Face checkpoint (config.json, model.safetensors,
tokenizer files, generation_config.json) plus `apr.json`: what the model was trained to do
(`ModelInfo`), so evaluation can prompt it the way it was trained. The forward the engine
runs is apr.engine.llama; this module only deals in folders and HF models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safetensors import SafetensorError

from apr.countdown import TaskConfig
from apr.errors import UserError
from apr.io import atomic_write

# name -> (layers, hidden, intermediate, heads, max positions)
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "cpu-mini": (3, 128, 352, 4, 2048),  # ~0.6M: the `cpu` recipe's model, a few k tokens/s on 2 cores
    "cpu-deep": (6, 128, 352, 4, 2048),  # ~1.2M: cpu-mini twice as deep (more steps for arithmetic)
    "cpu-wide": (3, 128, 1024, 4, 2048),  # ~1.4M: cpu-mini with 3x the MLP (room for facts); grown from it
    "tiny": (4, 192, 512, 6, 4096),  # ~1.8M non-embedding params: fast on one CPU
    "gpu-10m": (6, 384, 1024, 6, 4096),  # ~10.6M, ~21 MB in bf16: the `gpu` recipe's model
    "small": (8, 512, 1376, 8, 4096),  # ~25M
    "paper": (18, 1024, 2752, 16, 4096),  # the published model: 228M non-embedding
}

DEFAULT_TASK = TaskConfig().as_dict()  # the published task, as apr.json records a task
# apr.json keys that said `budget_prefix` before, one per method.
OLD_PREFIX_KEYS = ("sub_call_budget", "token_budget")


@dataclass
class ModelInfo:
    """What a model folder holds, written as apr.json beside the HF files."""

    method: Literal["apr", "sos"] = "apr"
    preset: str = "unknown"
    task: dict = field(default_factory=lambda: dict(DEFAULT_TASK))
    # Trained with its budget as a prompt prefix: `Sub Call Budget: N ` (APR, N child threads)
    # or `Token Budget: N ` (SoS+). Written before as `sub_call_budget` / `token_budget`.
    budget_prefix: bool = False
    tokenizer: str = "unknown"  # apr.tokenizer.tokenizer_fingerprint
    tokenizer_name: str = ""  # what the training config named: apr | apr-num99 | apr-num999 | a folder
    context: int = 4096  # the training row length, in tokens
    # The window per thread the model is evaluated at by default (`apr eval`, `apr demo`, `apr
    # serve`, RL rollouts). None: its training `context`.
    eval_context: int | None = None
    # Children asked by default (`Sub Call Budget: N`) of a model trained with the prefix: the
    # median child count of its training demonstrations, or the best budget of a validation
    # sweep. None: the runtime derives one from the task (apr.runtime_config.default_child_budget).
    child_budget: int | None = None
    # "exact": RL rollouts of this model (or of a model it was trained from) ran with exact
    # arithmetic, the engine writing operation results (apr.arithmetic_labels); None: never.
    rl_arithmetic: str | None = None
    # GRPO steps these weights have had, summed over the RL runs they came through; 0: supervised
    # only. Folders written before the field say neither (reports then say "not recorded").
    rl_steps: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}  # tolerate newer fields
        old = [d[k] for k in OLD_PREFIX_KEYS if k in d]
        if old and "budget_prefix" not in values:  # an apr.json written before the rename
            values["budget_prefix"] = any(v is True for v in old)
        return cls(**values)


def preset_config(preset: str, vocab_size: int, bos_token_id=None, eos_token_id=None, pad_token_id=None):
    """The `LlamaConfig` for a preset (untied embeddings, as published)."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise UserError(f"unknown model preset {preset!r} (choose from {', '.join(PRESETS)})")
    layers, hidden, inter, heads, positions = PRESETS[preset]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def make_model(preset: str, tokenizer, attn_implementation: str = "sdpa"):
    """A freshly initialised `LlamaForCausalLM` of `preset` sized for `tokenizer`."""
    from transformers import LlamaForCausalLM

    config = preset_config(
        preset, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config)


def count_params(model, non_embedding: bool = True) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    return n


def save_model(model, tokenizer, info: ModelInfo, out_dir: str | Path, max_shard_size: str = "5GB") -> Path:
    """Write a standard HF folder plus apr.json; returns the folder. A new folder appears
    whole or not at all (written beside it under a temporary name, then renamed), so a crash
    mid-save never leaves a half model that looks finished; an existing one is written into."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        return _write_model(model, tokenizer, info, out_dir, max_shard_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the folder gets the mode mkdir would give
    try:
        _write_model(model, tokenizer, info, tmp, max_shard_size)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_model(model, tokenizer, info: ModelInfo, out_dir: Path, max_shard_size: str) -> Path:
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    portable_tokenizer_config(out_dir, info.context)
    with atomic_write(out_dir / "apr.json") as f:
        json.dump(dataclasses.asdict(info), f, indent=2)
    if not (out_dir / "README.md").exists():
        with atomic_write(out_dir / "README.md") as f:
            f.write(model_card(info))
    umask = os.umask(0)
    os.umask(umask)
    for p in out_dir.iterdir():  # the weights are written 0600 by transformers: share like any file
        if p.is_file():
            p.chmod(0o666 & ~umask)
    return out_dir


def portable_tokenizer_config(model_dir: Path, context: int) -> None:
    """Make tokenizer_config.json load the same way in transformers 4 and 5.

    transformers 5 names the class `TokenizersBackend`, which version 4 does not know; both
    know `PreTrainedTokenizerFast`. Our models take no `token_type_ids` (a tokenizer that
    returns them breaks `generate`), and `model_max_length` is the trained context.
    """
    path = model_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["model_input_names"] = ["input_ids", "attention_mask"]
    cfg["model_max_length"] = context
    for key in ("backend", "is_local", "local_files_only"):  # version-5 bookkeeping, not settings
        cfg.pop(key, None)
    with atomic_write(path) as f:
        json.dump(cfg, f, indent=2)


def model_card(info: ModelInfo) -> str:
    kind = "APR (spawns and joins child threads)" if info.method == "apr" else "SoS+ (serial search)"
    task = info.task if isinstance(info.task, dict) else {}
    return (f"---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [countdown, apr]\n---\n\n"
            f"# {kind} model, Countdown-{task.get('num_count', '?')}\n\n"
            f"A Llama (`{info.preset}` preset) trained by `apr` on symbolic-solver demonstrations in the "
            f"published trace language (Pan et al., 2025, *Learning Adaptive Parallel Reasoning with Language "
            f"Models*). Task: {task}. Context: {info.context} tokens per thread. What it was trained for is in "
            f"`apr.json`.\n\nUse it through the spawn/join runtime: `apr eval --model DIR --method {info.method} "
            f"--out RUN_DIR`, or serve it (`apr serve --model DIR`). Plain `generate` gives the root thread only.\n"
            + (f"\nAfter supervised training, {info.rl_steps} steps of GRPO (`rl_steps` in `apr.json`).\n"
               if info.rl_steps else "")
            + ("\nTrained by RL with exact arithmetic in its rollouts (an ablation): the engine wrote the results of "
               "its operation lines (those tokens carried no gradient), so RL rewarded searches whose arithmetic the "
               "model did not do (`rl_arithmetic` in `apr.json`; docs/evaluation.md).\n"
               if info.rl_arithmetic == "exact" else ""))


def load_model_info(model_dir: str | Path) -> ModelInfo:
    """apr.json of a model folder; a folder without one (a published checkpoint) is APR."""
    path = Path(model_dir) / "apr.json"
    if not path.exists():
        return ModelInfo(method="apr")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise UserError(f"unreadable apr.json: {str(e).splitlines()[0]}", str(path)) from None
    if not isinstance(d, dict):
        raise UserError("apr.json must be a JSON object", str(path))
    try:
        info = ModelInfo.from_dict(d)
    except TypeError as e:
        raise UserError(f"unreadable apr.json: {e}", str(path)) from None
    if info.method not in ("apr", "sos"):
        raise UserError(f"apr.json: unknown method {info.method!r} (apr or sos)", str(path))
    TaskConfig.from_dict(info.task, str(path))  # an object of well-formed ranges: callers read it
    if not isinstance(info.context, int) or isinstance(info.context, bool) or info.context < 1:
        raise UserError(f"apr.json: context must be a positive integer, got {info.context!r}", str(path))
    if info.eval_context is not None and (not isinstance(info.eval_context, int) or isinstance(info.eval_context, bool)
                                          or info.eval_context < 1):
        raise UserError(f"apr.json: eval_context must be a positive integer, got {info.eval_context!r}", str(path))
    if not isinstance(info.budget_prefix, bool):
        raise UserError(f"apr.json: budget_prefix must be true or false, got {info.budget_prefix!r}", str(path))
    if info.child_budget is not None and (not isinstance(info.child_budget, int) or info.child_budget < 1):
        raise UserError(f"apr.json: child_budget must be a positive integer, got {info.child_budget!r}", str(path))
    if info.rl_arithmetic not in (None, "exact"):
        raise UserError(f"apr.json: rl_arithmetic must be null or exact, got {info.rl_arithmetic!r}", str(path))
    if not isinstance(info.rl_steps, int) or isinstance(info.rl_steps, bool) or info.rl_steps < 0:
        raise UserError(f"apr.json: rl_steps must be 0 or a positive integer, got {info.rl_steps!r}", str(path))
    return info


def model_info(model_dir: str | Path | None) -> ModelInfo:
    """The apr.json of the model folder a command names; the defaults when it names none (a
    bare server, or the solvers)."""
    if model_dir:
        if not Path(model_dir).is_dir():
            raise UserError("model folder not found", str(model_dir))
        return load_model_info(model_dir)
    return ModelInfo()


def check_window(model_dir: str | Path, context: int) -> None:
    """Refuse a window past a local model's positions (config.json `max_position_embeddings`):
    the model has no positions there."""
    limit = position_limit(model_dir)
    if limit and context > limit:
        raise UserError(f"`context` {context} is more than the model's {limit} positions (max_position_embeddings)",
                        str(Path(model_dir) / "config.json"), fields=("context",))


def position_limit(model_dir: str | Path) -> int | None:
    """The positions a model has (config.json `max_position_embeddings`), read without
    loading it; None when the config does not say (or is not readable: loading says why)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    n = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def load_model(model_dir: str | Path, device: str = "cpu", dtype=None):
    """Load (model, tokenizer, info) from a model folder; one-line UserError if it isn't one."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from apr.tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError("not a model folder (no config.json)", str(model_dir))
    try:
        config = AutoConfig.from_pretrained(model_dir)
        kwargs = {} if dtype is None else {"dtype": dtype}
        model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UserError(f"cannot load a causal language model: {str(e).splitlines()[0]}", str(model_dir)) from None
    model.to(device).eval()
    return model, load_tokenizer(model_dir), load_model_info(model_dir)
