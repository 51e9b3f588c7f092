"""Supervised training on search demonstrations: one loop from one CPU to many GPUs.

Launch with `apr train sft --config FILE`, or `torchrun --nproc_per_node N -m apr train
sft ...` for data parallel (DDP: nccl on GPU, gloo on CPU). Every process builds the same
packed dataset and the same global batch order (a seeded permutation per epoch), then takes
its own slice of each global batch, so the data position is just the step number.

The loss of a step is the sum of token losses over the global batch divided by the number
of target tokens in that batch (known to every rank without communication), so results do
not depend on how the batch is split into processes or micro-batches.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from apr.datasets import packaged_validation_set
from apr.errors import UserError
from apr.io import atomic_write
from apr.model_folder import ModelInfo, count_params, make_model, save_model
from apr.tokenizer import load_tokenizer, tokenizer_fingerprint
from apr.train import drills, packing
from apr.train.checkpoint import FINAL, check_run_folder, load_checkpoint, load_states, save_checkpoint
from apr.train.common import (
    EpochSampler,
    all_sum,
    autocast_for,
    barrier,
    check_batch_memory,
    end_processes,
    out_of_memory_is_user_error,
    setup_device,
    start_run,
    warmup_cosine,
    write_config,
)
from apr.train.config import SFTConfig
from apr.train.metrics import MetricsLog

log = logging.getLogger(__name__)


class SFTTrainer:
    """Builds data, model and optimizer from a config; `train()` runs to max_steps."""

    def __init__(self, config: SFTConfig, resume: bool = False, evaluate_accuracy: Callable[[Path], float] | None = None,
                 progress: bool = True, overwrite: bool = False):
        self.cfg = cfg = config
        self.progress = progress
        self.out = Path(cfg.out_dir)
        self.overwrite = overwrite
        self.metrics = MetricsLog(self.out)
        self.evaluate_accuracy = evaluate_accuracy
        self.rank, self.world, self.device = setup_device(cfg.device)
        check_run_folder(self.out, resume, overwrite)  # a finished run is never overwritten unasked
        per_rank, rem = divmod(cfg.batch_size, self.world * cfg.grad_accum)
        if rem or per_rank == 0:
            raise UserError(
                f"config: batch_size {cfg.batch_size} must be a multiple of processes x grad_accum "
                f"({self.world} x {cfg.grad_accum})"
            )
        self.micro = per_rank

        self.tokenizer = load_tokenizer(cfg.tokenizer)
        self.stats, self.train_data, self.val_data, method, task = self._load_data()
        self.info = ModelInfo(
            method=method,
            preset=cfg.model,
            task=task,
            budget_prefix=cfg.budget_prefix,
            tokenizer=tokenizer_fingerprint(self.tokenizer),
            tokenizer_name=cfg.tokenizer,
            context=cfg.context,
            child_budget=self.child_budget,
        )
        self.row_tokens = (self.train_data.targets != packing.IGNORE).sum(1)
        self.sampler = EpochSampler(len(self.train_data), cfg.batch_size, cfg.seed)

        if cfg.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise UserError("config: attn_implementation flash_attention_2 needs the flash-attn package (CUDA only: "
                            "pip install flash-attn --no-build-isolation); or use flex_attention or sdpa")
        torch.manual_seed(cfg.seed)
        self.raw_model = make_model(cfg.model, self.tokenizer, cfg.attn_implementation).to(self.device)
        self.batch_what = f"a micro-batch of {self.micro} rows x {cfg.context} tokens (lower `batch_size` or raise `grad_accum`)"
        check_batch_memory(self.raw_model, self.micro * cfg.context, self.device, cfg.dtype, self.batch_what,
                           ("batch_size", "grad_accum"))
        if cfg.init:
            self._load_init(cfg.init)
        decay = [p for p in self.raw_model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.raw_model.parameters() if p.dim() < 2]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            fused=self.device.type == "cuda",
        )
        # cfg.max_steps is read at every step: a time budget may lower it mid-run.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, o.warmup_steps, cfg.max_steps, o.lr, o.min_lr)
        )
        self.step = 0
        if resume:
            self._resume()

        self.autocast = autocast_for(cfg.dtype, self.device)
        # Evaluation runs on `local_model`: ranks may do different numbers of forwards there.
        self.local_model = torch.compile(self.raw_model) if cfg.compile else self.raw_model
        self.model = self.local_model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # The only buffers (rotary frequencies) are constants: no need to sync them.
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)

    # ------------------------------------------------------------------ data

    def _load_data(self):
        cfg = self.cfg
        records = packing.read_demonstrations(cfg.data)
        packing.check_no_overlap(records, cfg.eval_problems or packaged_validation_set())
        order = list(range(len(records)))
        random.Random(cfg.seed).shuffle(order)
        n_val = round(len(records) * cfg.val_fraction)
        if cfg.val_fraction > 0 and n_val == 0 and len(records) > 1:
            n_val = 1
        val_ids = set(order[:n_val])
        opts = dict(budget_prefix=cfg.budget_prefix)
        train = packing.demonstrations([r for i, r in enumerate(records) if i not in val_ids], self.tokenizer, **opts)
        val = packing.demonstrations([r for i, r in enumerate(records) if i in val_ids], self.tokenizer, **opts)
        self.child_budget = packing.child_budget(train) if cfg.budget_prefix else None
        # every kind of drill is drawn from the demonstrations alone, not from each other
        train += (drills.arithmetic_facts(train, cfg.arithmetic_facts, cfg.seed, cfg.arithmetic_facts_min_result)
                  + drills.node_drills(train, cfg.node_drills, cfg.seed)
                  + drills.goal_drills(train, cfg.goal_drills, cfg.seed)
                  + drills.product_drills(train, cfg.product_drills, cfg.seed,
                                         in_state=cfg.product_drills_in_state))
        methods = {d.method for d in train + val}
        if len(methods) > 1:
            raise UserError("mixes APR and SoS+ demonstrations; train one method per model", cfg.data)
        method = methods.pop()
        stats = packing.DataStats()
        train_data = packing.build_packed(train, self.tokenizer, cfg.context, cfg.train_on_inserted, stats)
        val_data = None
        if val:
            val_stats = packing.DataStats()
            docs = sum(len(d.strings) for d in val)
            try:
                val_data = packing.build_packed(val, self.tokenizer, cfg.context, cfg.train_on_inserted, val_stats)
            except UserError:  # a small held-out set whose documents are all longer than the context
                log.warning(f"validation: none of {docs} held-out documents fits {cfg.context} tokens; "
                            "no validation loss")
        task = packing.record_task(records)
        return stats, train_data, val_data, method, task

    def _batch(self, packed: packing.Packed, rows: np.ndarray):
        rows = np.sort(rows)
        return [
            torch.from_numpy(a[rows]).long().to(self.device, non_blocking=True)
            for a in (packed.input_ids, packed.targets, packed.position_ids)
        ]

    def _loss_sum(self, model, packed: packing.Packed, rows: np.ndarray) -> torch.Tensor:
        x, y, pos = self._batch(packed, rows)
        with self.autocast:
            logits = model(input_ids=x, position_ids=pos, use_cache=False).logits
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=packing.IGNORE, reduction="sum")

    # ------------------------------------------------------------------ steps

    def train_step(self) -> torch.Tensor:
        """One optimizer step on the global batch; returns this rank's share of its loss."""
        cfg = self.cfg
        rows = self.sampler.indices(self.step)
        n_tok = max(1, int(self.row_tokens[rows].sum()))
        per_rank = cfg.batch_size // self.world
        mine = rows[self.rank * per_rank : (self.rank + 1) * per_rank]
        total = torch.zeros((), device=self.device)
        for k in range(cfg.grad_accum):
            last = k == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if self.world == 1 or last else self.model.no_sync()
            with sync:
                loss_sum = self._loss_sum(self.model, self.train_data, mine[k * self.micro : (k + 1) * self.micro])
                # DDP averages gradients over ranks; scale so the result is sum / n_tok.
                (loss_sum * (self.world / n_tok)).backward()
            total += loss_sum.detach()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / n_tok

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean token loss on a fixed slice of the held-out records (all ranks take part)."""
        self.local_model.eval()
        rows = np.arange(min(len(self.val_data), self.cfg.eval_batches * self.cfg.batch_size))
        mine = rows[self.rank :: self.world]
        loss = torch.zeros((), device=self.device)
        for i in range(0, len(mine), self.micro):
            loss += self._loss_sum(self.local_model, self.val_data, mine[i : i + self.micro])
        n_tok = float((self.val_data.targets[rows] != packing.IGNORE).sum())
        self.local_model.train()
        return all_sum(loss, self.world).item() / max(1.0, n_tok)

    # ------------------------------------------------------------------ loop

    # Time budget: steps ignored at the start (compile, allocator warm-up), steps timed before
    # the first plan, and steps between re-plans. Re-planning matters: throughput can change
    # after the first plan (late compiles, other jobs sharing the GPU), and a plan made from
    # slow early steps alone can stop a run at a fraction of its budget.
    PROBE_SKIP, PROBE_STEPS, REPLAN_EVERY = 3, 10, 50

    def clock(self) -> float:
        """Seconds on the clock `time_budget_s` counts: wall, or this process's CPU time."""
        return time.process_time() if self.cfg.time_budget_clock == "cpu" else time.perf_counter()

    def _fit_time_budget(self, t_start: float, t_window: float, steps_timed: int, cap: int) -> None:
        """Set max_steps (at most `cap`) so that training ends `time_budget_s` after it
        started, at the step time of the last `steps_timed` steps."""
        cfg = self.cfg
        per_step = (self.clock() - t_window) / steps_timed
        left = cfg.time_budget_s - (self.clock() - t_start)
        want = torch.tensor([self.step + max(1, int(left / per_step))], device=self.device)
        if self.world > 1:
            dist.broadcast(want, 0)  # every rank must stop at the same step
        new = min(cap, int(want.item()))
        if new != cfg.max_steps and self.rank == 0:
            log.info(f"time budget {cfg.time_budget_s:.0f} s at {per_step * 1000:.0f} ms/step: "
                     f"max_steps {cfg.max_steps} -> {new}")
        cfg.max_steps = new  # the scheduler reads cfg.max_steps: the cosine ends at `new`
        if self.rank == 0:
            write_config(self.out, cfg)

    def _start(self) -> None:
        """The run folder's first writes, once the first step has run: a batch that does not
        fit in memory fails before anything is written (or an earlier run removed)."""
        cfg = self.cfg
        if self.rank == 0:
            start_run(self.out, cfg, self.metrics, self.first_step, self.overwrite)
            with atomic_write(self.out / "data_stats.json") as f:
                json.dump(vars(self.stats), f, indent=2)
            s = self.stats
            log.info(
                f"data: {s.records} records -> {s.documents} documents, {s.rows} rows of {cfg.context} tokens "
                f"({s.dropped_long} documents longer than the context dropped); model {cfg.model}: "
                f"{count_params(self.raw_model) / 1e6:.1f}M non-embedding params; {self.world} process(es) on "
                f"{self.device.type}"
            )
        self.started = True

    def train(self) -> Path:
        with out_of_memory_is_user_error(self.batch_what, ("batch_size", "grad_accum")):
            return self._train()

    def _train(self) -> Path:
        cfg, main = self.cfg, self.rank == 0
        self.first_step, self.started = self.step, False
        self.model.train()
        # A bar on a terminal; elsewhere (a log file, --quiet off) one status line per logged step.
        bar = tqdm(total=cfg.max_steps, initial=self.step, file=sys.stderr, unit="step",
                   disable=None if main and self.progress else True)
        step_line = log.debug if not bar.disable else log.info
        tokens_per_step = cfg.batch_size * cfg.context
        loss_acc, n_acc, t0, steps0 = torch.zeros((), device=self.device), 0, time.perf_counter(), self.step
        t_start, first, cap = self.clock(), self.step, cfg.max_steps
        t_window, window_from, plan_at = 0.0, first + self.PROBE_SKIP, first + self.PROBE_SKIP + self.PROBE_STEPS
        while self.step < cfg.max_steps:
            loss_acc += self.train_step()
            if not self.started:
                self._start()
            n_acc += 1
            bar.update(1)
            if cfg.time_budget_s > 0 and self.step in (window_from, plan_at):
                loss_acc.item()  # wait for the device: time whole steps only
                if self.step == plan_at:
                    self._fit_time_budget(t_start, t_window, plan_at - window_from, cap)
                    bar.total = cfg.max_steps
                    window_from, plan_at = self.step, self.step + self.REPLAN_EVERY
                t_window = self.clock()
            done = self.step >= cfg.max_steps
            if self.step % cfg.log_every == 0 or done:
                loss = all_sum(loss_acc, self.world).item() / n_acc
                elapsed = time.perf_counter() - t0
                rec = {
                    "step": self.step,
                    "loss": loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": (self.step - steps0) * tokens_per_step / elapsed,
                }
                if self.val_data is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or done):
                    rec["val_loss"] = self.evaluate()
                if main:
                    self.metrics.log(rec)
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                    step_line(f"sft: step {self.step}/{cfg.max_steps} loss {loss:.4f}"
                              + (f" val_loss {rec['val_loss']:.4f}" if "val_loss" in rec else "")
                              + f" {rec['tokens_per_s']:.0f} tokens/s")
                loss_acc, n_acc, t0, steps0 = torch.zeros((), device=self.device), 0, time.perf_counter(), self.step
            if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                self.save_checkpoint()
        bar.close()
        if not self.started:  # resumed at (or past) max_steps: no step ran
            self._start()
        final = self.out / FINAL
        if main:
            save_model(self.raw_model, self.tokenizer, self.info, final, cfg.max_shard_size)
            if self.evaluate_accuracy is not None:
                self.metrics.log({"step": self.step, "val_accuracy": self.evaluate_accuracy(final)})
        barrier(self.world)
        return final

    # ------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        return {"step": self.step, "preset": self.cfg.model, "tokenizer": self.info.tokenizer, "context": self.cfg.context}

    def save_checkpoint(self) -> None:
        """Write checkpoints/step_N atomically; the data position is the step itself."""
        if self.rank == 0:
            state = {
                "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
            }
            save_checkpoint(self.out, self.step, state, self._meta(), self.cfg.keep_checkpoints)
        barrier(self.world)

    def _load_init(self, folder: str) -> None:
        """Start from a model folder's weights (a previous run's model) instead of a random
        initialisation; it must be the same tokenizer and method, and the same preset or one
        it grows into (`apr.train.grow`: a wider MLP, computing what the folder's model does)."""
        from apr.model_folder import load_model_info
        from apr.train import grow
        from safetensors.torch import load_file

        info = load_model_info(folder)
        grown = info.preset != self.cfg.model and grow.grows_into(info.preset, self.cfg.model)
        for key, want in (("preset", self.cfg.model), ("tokenizer", self.info.tokenizer), ("method", self.info.method)):
            if getattr(info, key) != want and not (key == "preset" and grown):
                raise UserError(f"config: init model has {key} {getattr(info, key)!r}, this run {want!r}", folder)
        files = sorted(Path(folder).glob("model*.safetensors"))
        if not files:
            raise UserError("config: init folder holds no model*.safetensors", folder)
        state = {}
        for f in files:
            state.update(load_file(str(f)))
        try:
            if grown:
                state = grow.widen_mlps(state, self.raw_model.state_dict())
                log.info(f"init: {info.preset} grown into {self.cfg.model} (wider MLPs, same function)")
            self.raw_model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"config: init weights do not fit the model: {str(e).splitlines()[0]}", folder) from None

    def _resume(self) -> None:
        expect = {"preset": self.cfg.model, "tokenizer": self.info.tokenizer, "context": self.cfg.context}
        state = load_checkpoint(self.out, expect, "this config")
        load_states(state, {"model": self.raw_model, "optimizer": self.optimizer, "scheduler": self.scheduler})
        self.step = state["step"]


def train_sft(
    config: SFTConfig, resume: bool = False, evaluate_accuracy: Callable[[Path], float] | None = None,
    progress: bool = True, overwrite: bool = False,
) -> Path:
    """Train a model from demonstrations; returns the final model folder (OUT_DIR/final).
    A folder holding a finished run is refused unless `overwrite` (which starts it over).

    `evaluate_accuracy(model_dir) -> float`, when given, is called on the final model and
    its result logged as `val_accuracy` (a hook for the runtime's evaluation). `progress`:
    a progress bar when stderr is a terminal (else a status line per logged step, at INFO).
    """
    trainer = SFTTrainer(config, resume=resume, evaluate_accuracy=evaluate_accuracy, progress=progress,
                         overwrite=overwrite)
    try:
        return trainer.train()
    finally:
        end_processes(trainer.world)
