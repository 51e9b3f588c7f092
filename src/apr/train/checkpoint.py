"""Training checkpoints shared by the SFT and RL trainers: atomic writes, exact resume.

A checkpoint is a folder `OUT_DIR/checkpoints/step_N` holding `state.pt` (model, optimizer,
anything else the trainer keeps, and every RNG state) and `meta.json` (what the run is:
preset, tokenizer, ...). It is written under a temporary name and renamed, then the
`latest` pointer is replaced atomically, so a crash mid-write never breaks the latest one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from apr.errors import UserError
from apr.io import atomic_write

CHECKPOINTS = "checkpoints"


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])


def save_checkpoint(out_dir: Path, step: int, state: dict, meta: dict, keep: int) -> Path:
    """Write checkpoints/step_N (with the RNG states added) and point `latest` at it."""
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


def load_checkpoint(out_dir: Path, expect: dict, what: str = "this run") -> dict:
    """The latest checkpoint's state, after checking its meta against `expect`; RNG states
    are restored. Refuses (one line) a checkpoint of another preset, tokenizer, ..."""
    root = Path(out_dir) / CHECKPOINTS
    try:
        ckpt = root / (root / "latest").read_text().strip()
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError("`resume`: no readable checkpoint", str(root), fields=("resume",)) from None
    for key, now in expect.items():
        if meta.get(key) != now:
            raise UserError(f"`resume`: checkpoint has {key} {meta.get(key)!r}, {what} has {now!r}", str(ckpt),
                            fields=("resume",))
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    restore_rng(state["rng"])
    state["path"] = str(ckpt)
    return state
