"""What the SFT and GRPO trainers share: device and precision, collectives, the batch order,
the run folder, and the learning-rate schedules."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from apr.device import check_memory, resolve_device
from apr.errors import UserError
from apr.io import atomic_write
from apr.rng import derive_seed
from apr.train.checkpoint import clear_run_folder
from apr.train.config_files import dump_config
from apr.train.metrics import MetricsLog

# ---------------------------------------------------------------------------- device


def setup_device(pref: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun. The
    device is checked as the engine checks it (`apr.device.resolve_device`): a name that is
    no device, CUDA on a machine without it or a missing GPU is one line, before any work."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(pref)
    cuda = chosen.type == "cuda"
    if cuda:
        device = resolve_device(f"cuda:{local}") if world > 1 or pref in ("auto", "cuda") else chosen
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        if not cuda:  # share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return rank, world, device


def autocast_for(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context forwards run in: bf16 autocast for `dtype` bfloat16, or auto on a GPU;
    else none (fp32). One reusable object: enter it around every forward."""
    use_bf16 = dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def end_processes(world: int) -> None:
    """Leave the process group (after training, whether it ended or failed)."""
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- collectives


def all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """`t` summed over all processes, in place (unchanged in a single process)."""
    if world > 1:
        dist.all_reduce(t)
    return t


def all_sum_named(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """Named numbers summed over all processes as one float64 all-reduce. Every process
    must pass the same keys in the same order (the order of the tensor)."""
    t = all_sum(torch.tensor(list(values.values()), dtype=torch.float64, device=device), world)
    return dict(zip(values, t.tolist()))


def all_sum_grads(params: list[torch.Tensor], world: int) -> None:
    """Sum the gradients of `params` over all processes with one flat all-reduce (for a
    trainer without DDP, whose ranks may run different numbers of micro-batches)."""
    if world == 1:
        return
    grads = [p.grad for p in params]
    flat = all_sum(torch.cat([g.flatten() for g in grads]), world)
    at = 0
    for g in grads:
        g.copy_(flat[at : at + g.numel()].view_as(g))
        at += g.numel()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# ---------------------------------------------------------------------------- batch order


class EpochSampler:
    """The global batch order over `n` items: batch `step` is the next `batch_size` indices
    of an endless stream of seeded per-epoch permutations. Every process computes the same
    order, and resuming needs only the step number."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def indices(self, step: int) -> np.ndarray:
        """The item indices (int64) of global batch `step`."""
        n, b = self.n, self.batch_size
        out, at = [], step * b
        while len(out) < b:
            epoch, i = divmod(at + len(out), n)
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
                self._perms = {epoch: torch.randperm(n, generator=g).numpy()}  # keep one epoch
            out.extend(self._perms[epoch][i : i + b - len(out)])
        return np.asarray(out)


# ---------------------------------------------------------------------------- run folder


def write_config(out_dir: Path, config) -> None:
    """OUT_DIR/config.yaml: the resolved config, written atomically."""
    with atomic_write(Path(out_dir) / "config.yaml") as f:
        f.write(dump_config(config))


def start_run(out_dir: Path, config, metrics: MetricsLog, step: int, overwrite: bool = False) -> None:
    """The main process, as training starts at `step`: make the run folder (emptied of an
    earlier run's model and checkpoints when `overwrite`), write the config, and drop metrics
    lines after `step` (a resumed run logs them again)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_run_folder(out_dir)
    write_config(out_dir, config)
    metrics.trim(step)


# ---------------------------------------------------------------------------- memory


def check_batch_memory(model, tokens: int, device: torch.device, dtype: str, what: str, fields: tuple[str, ...]) -> None:
    """Refuse a forward and backward over `tokens` tokens at once that cannot fit: a lower
    bound of what it keeps for the backward pass (per token: the logits, and per layer a few
    hidden-size and MLP-size activations) and of the optimizer's state, against the memory
    free on `device`. A bound, not a forecast: a batch that passes may still not fit, and is
    then caught as it runs (`out_of_memory_is_user_error`)."""
    cfg = model.config
    act = 2 if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda") else 4
    per_token = 3 * cfg.vocab_size * 4 + cfg.num_hidden_layers * (6 * cfg.hidden_size + 2 * cfg.intermediate_size) * act
    weights = 16 * sum(p.numel() for p in model.parameters())  # fp32 weights, gradients, two Adam moments
    check_memory(tokens * per_token + weights, what, device, fields)


@contextlib.contextmanager
def out_of_memory_is_user_error(what: str, fields: tuple[str, ...]):
    """An allocation that fails inside (CUDA or host) as a one-line UserError saying what to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(f"{what} ran out of memory", fields=fields) from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e).lower():
            raise
        raise UserError(f"{what} ran out of memory", fields=fields) from None


# ---------------------------------------------------------------------------- learning rate


def warmup_cosine(step: int, warmup_steps: int, max_steps: int, lr: float, min_lr: float) -> float:
    """Learning-rate factor (of `lr`) for optimizer step `step`: linear warmup to 1 over
    `warmup_steps`, then cosine decay to min_lr/lr at `max_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    floor = min_lr / lr if lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_constant(step: int, warmup_steps: int) -> float:
    """Learning-rate factor for optimizer step `step`: linear warmup from 1/warmup_steps
    to 1, then 1 (always 1 without warmup). A function of the step number alone, so a
    resumed run sets exactly the rates of an uninterrupted one."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
