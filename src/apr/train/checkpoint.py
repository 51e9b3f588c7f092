"""Training checkpoints shared by the SFT and RL trainers: atomic writes, exact resume, and
the run folder's rules.

A checkpoint is a folder `OUT_DIR/checkpoints/step_N` holding `state.pt` (model, optimizer,
anything else the trainer keeps, and every RNG state) and `meta.json` (what the run is:
preset, tokenizer, ...). It is written under a temporary name and renamed, then the
`latest` pointer is replaced atomically, so a crash mid-write never breaks the latest one.

A run folder with a final model (`OUT_DIR/final`) is finished: a second run into it is
refused, resumed or not, unless the caller says `overwrite` (`check_run_folder`), so a
finished run survives any second invocation byte for byte. A checkpoint is checked whole
before anything of it is used (`load_checkpoint`, `load_states`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

from apr.errors import UserError, first_line
from apr.io import atomic_write, check_output_dir

CHECKPOINTS = "checkpoints"
FINAL = "final"
# What a run writes besides its metrics and config: removed when a run starts over (`overwrite`).
RUN_PARTS = (FINAL, CHECKPOINTS, "policy")


# torch is imported where it is used: the command line checks the run folder
# (`check_run_folder`) before the trainers load.


def rng_state() -> dict:
    import torch

    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def restore_rng(rng: dict) -> None:
    import torch

    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])


def save_checkpoint(out_dir: Path, step: int, state: dict, meta: dict, keep: int) -> Path:
    """Write checkpoints/step_N (with the RNG states added) and point `latest` at it."""
    import torch

    root = Path(out_dir) / CHECKPOINTS
    name = f"step_{step:07d}"
    tmp = root / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "state.pt", "wb") as f:
        torch.save({**state, "step": step, "rng": rng_state()}, f)
        f.flush()
        os.fsync(f.fileno())
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(tmp, root / name)
    with atomic_write(root / "latest") as f:
        f.write(name)
    for old in sorted(root.glob("step_*"))[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def has_checkpoint(out_dir: Path) -> bool:
    return (Path(out_dir) / CHECKPOINTS / "latest").exists()


def check_run_folder(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Before any work: `out_dir` can hold a run, and this run may go there. A finished run
    (a final model) is refused unless `overwrite`; a checkpoint is resumed (`resume`) or
    refused; `resume` needs a checkpoint and a run that is not finished."""
    out = check_output_dir(out_dir, field="out_dir")
    if resume and overwrite:
        raise UserError("give `resume` or `overwrite`, not both", fields=("resume", "overwrite"))
    if (out / FINAL).exists() and not overwrite:
        raise UserError(f"holds a finished run ({FINAL}/): it is kept as it is; choose another out_dir, or give "
                        "`overwrite` to train it again from scratch", str(out), fields=("overwrite",))
    if resume and not has_checkpoint(out):
        raise UserError(f"`resume`: no checkpoint to resume ({CHECKPOINTS}/latest)", str(out), fields=("resume",))
    if not resume and not overwrite and has_checkpoint(out):
        raise UserError("holds a checkpoint: resume it (`resume`), start over (`overwrite`), or choose another out_dir",
                        str(out), fields=("resume", "overwrite"))


def clear_run_folder(out_dir: str | Path) -> None:
    """Remove an earlier run's model and checkpoints (`overwrite`), once this run has started."""
    for name in RUN_PARTS:
        shutil.rmtree(Path(out_dir) / name, ignore_errors=True)


def load_checkpoint(out_dir: Path, expect: dict, what: str = "this run") -> dict:
    """The latest checkpoint's state, after checking its meta against `expect` and its state
    for what every checkpoint holds; RNG states are restored. Refuses (one line) a checkpoint
    of another preset, tokenizer, ..., and one that is unreadable or incomplete."""
    root = Path(out_dir) / CHECKPOINTS

    def bad(why: str, path: Path) -> UserError:
        return UserError(f"`resume`: {why}", str(path), fields=("resume",))

    try:
        name = (root / "latest").read_text().strip()
    except (OSError, UnicodeDecodeError):
        raise bad("no readable checkpoint", root) from None
    ckpt = root / name
    if not re.fullmatch(r"step_\d+", name) or not ckpt.is_dir():
        raise bad(f"latest names no checkpoint folder ({name[:40]!r})", root / "latest")
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError):
        raise bad("unreadable meta.json", ckpt) from None
    if not isinstance(meta, dict):
        raise bad("meta.json is not a JSON object", ckpt)
    for key, now in expect.items():
        if meta.get(key) != now:
            raise bad(f"checkpoint has {key} {meta.get(key)!r}, {what} has {now!r}", ckpt)
    import torch

    try:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file fails in many ways; all mean the same
        raise bad(f"unreadable state.pt ({first_line(e)})", ckpt) from None
    rng = state.get("rng") if isinstance(state, dict) else None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(rng, dict) or not {"torch", "cuda", "python"} <= set(rng) or not isinstance(step, int) or step < 0:
        raise bad("state.pt is not a training checkpoint (no step or RNG states)", ckpt)
    try:
        restore_rng(rng)
    except Exception as e:  # noqa: BLE001
        raise bad(f"state.pt holds unusable RNG states ({first_line(e)})", ckpt) from None
    state["path"] = str(ckpt)
    return state


def load_states(state: dict, parts: dict) -> None:
    """Load each of `parts` (name -> a module, optimizer or scheduler) from the checkpoint
    `state`; a part missing or of another shape is a one-line error naming the checkpoint."""
    for name, obj in parts.items():
        if name not in state:
            raise UserError(f"`resume`: checkpoint holds no {name} state", state["path"], fields=("resume",))
        try:
            obj.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise UserError(f"`resume`: the checkpoint's {name} state does not fit this run: {first_line(e)}",
                            state["path"], fields=("resume",)) from None
