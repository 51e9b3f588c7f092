"""The GRPO trainer behind `apr train rl` (config: apr.train.config.RLConfig, loss:
rl_loss, rewards: rewards).

One step:
  1. roll out: this process's share of `batch_size` problems, `group_size` samples each,
     through the spawn/join runtime at temperature 1 (per-thread seeds from the step, the
     problem and the sample, so a step's rollouts are a function of the weights and step);
  2. reward each rollout (1 when the checker accepts it), normalize within each group;
  3. learn (rl_learner.Learner): every thread segment is a sequence weighted by its
     rollout's advantage; `inner_steps` AdamW steps on the PPO-clipped loss with a k3 KL to
     the initial model;
  4. push the new weights to the rollout engine (in place for the local engine,
     `load_weights`; through `reload_weights` from OUT_DIR/policy for a server).

Data parallel under torchrun: each rank rolls out and learns on its slice of the problems;
gradients are summed with one all-reduce (token weights already carry the global 1/N),
so ranks may run different numbers of micro-batches.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import torch

from apr import arithmetic_labels as exact
from apr.countdown import Problem, read_problems
from apr.datasets import packaged_validation_set
from apr.engine.base import EngineError
from apr.errors import UserError
from apr.model_folder import ModelInfo, load_model, save_model
from apr.records import Record
from apr.rng import derive_seed
from apr.runtime import Runtime
from apr.runtime_config import RuntimeConfig
from apr.tokenizer import tokenizer_fingerprint
from apr.train import rl_loss as L
from apr.train.checkpoint import FINAL, check_run_folder, load_checkpoint, load_states, save_checkpoint
from apr.train.common import (
    EpochSampler,
    all_sum,
    all_sum_named,
    autocast_for,
    barrier,
    check_batch_memory,
    end_processes,
    out_of_memory_is_user_error,
    setup_device,
    start_run,
)
from apr.train.config import RLConfig
from apr.train.config_files import in_section
from apr.train.metrics import MetricsLog
from apr.train.rewards import RewardFn, resolve_reward
from apr.train.rl_learner import Learner

log = logging.getLogger(__name__)


def step_seed(seed: int, step: int) -> int:
    return derive_seed(seed, step) & 0x7FFFFFFF


class RLTrainer:
    def __init__(self, cfg: RLConfig, resume: bool = False, reward_fn: RewardFn | None = None, progress: bool = True,
                 overwrite: bool = False):
        self.progress = progress
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.overwrite = overwrite
        self.metrics = MetricsLog(self.out)
        self.rank, self.world, self.device = setup_device(cfg.device)
        if cfg.batch_size % self.world:
            raise UserError(f"config: batch_size {cfg.batch_size} must be a multiple of the {self.world} processes")
        check_run_folder(self.out, resume, overwrite)  # a finished run is never overwritten unasked

        # problems: training must not overlap validation
        self.train_problems = read_problems(cfg.problems)
        val_path = cfg.val_problems or packaged_validation_set()
        val_problems = read_problems(val_path)
        self.val_problems = val_problems[: cfg.val_limit]
        overlap = {p.key for p in self.train_problems} & {p.key for p in val_problems}
        if overlap:
            raise UserError(f"{len(overlap)} training problem(s) are also validation problems in {val_path} (same "
                            "sorted nums and target); remove them or choose `val_problems`", cfg.problems)
        self.sampler = EpochSampler(len(self.train_problems), cfg.batch_size, cfg.seed)
        self.reward_fn = reward_fn or resolve_reward(cfg.reward)

        # models: the policy (trained) and the frozen reference (the initial model)
        torch.manual_seed(cfg.seed)
        if not Path(cfg.init).is_dir():
            raise UserError("model folder not found", cfg.init)
        # fp32 master weights whatever the folder stores: our exported models are bf16, and
        # AdamW steps of ~lr on bf16 weights round to nothing or to a whole bf16 ulp.
        self.policy, self.tok, self.info = load_model(cfg.init, device=str(self.device), dtype=torch.float32)
        self.fingerprint = tokenizer_fingerprint(self.tok)
        if self.info.tokenizer not in ("unknown", self.fingerprint):
            raise UserError(f"apr.json names tokenizer {self.info.tokenizer}, the folder holds {self.fingerprint}", cfg.init)
        try:  # seeds: the run's (per step in `rollout`), not `rollout.seed` (RLConfig.validate)
            self.rt = dataclasses.replace(cfg.rollout, seed=cfg.seed).resolve(self.info, sampled=True)
        except UserError as e:
            raise in_section(e, "rollout") from None
        self.method = self.rt.method
        if self.rt.arithmetic == "exact":  # every saved policy's apr.json and model card say so
            self.info = dataclasses.replace(self.info, rl_arithmetic="exact")
        self.rl_steps_before = self.info.rl_steps  # the init's own RL, if it had any
        self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.policy.train()
        self.max_len = int(getattr(self.policy.config, "max_position_embeddings", 4096))
        if self.rt.context > self.max_len and self.rt.context != RuntimeConfig.context:  # asked for: see eval.model_info
            raise UserError(f"config: `rollout.context` {self.rt.context} is more than the model's {self.max_len} positions")
        # The policy and the frozen reference both run forwards over micro_tokens at once.
        self.batch_what = f"a learner micro-batch of {cfg.micro_tokens} tokens (lower `micro_tokens`)"
        check_batch_memory(self.policy, 2 * cfg.micro_tokens, self.device, cfg.dtype, self.batch_what, ("micro_tokens",))
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        self.autocast = autocast_for(cfg.dtype, self.device)
        self.step = 0
        if resume:
            self._resume()  # loads the policy and the optimizer in place: the learner holds them
        self.learner = Learner(cfg, self.policy, self.ref, self.optimizer, self.tok, self.max_len, self.device,
                               self.world, self.autocast)
        self.engine = self._make_engine()

    def saved_info(self) -> ModelInfo:
        """apr.json of a saved policy: the init's, with the RL steps it has had so far."""
        return dataclasses.replace(self.info, rl_steps=self.rl_steps_before + self.step)

    # ------------------------------------------------------------------ engine

    def _make_engine(self):
        cfg = self.cfg
        if cfg.engine == "server":
            from apr.engine.openai import OpenAIEngine

            engine = OpenAIEngine(cfg.server, model=cfg.served_model or None, tokenizer=self.tok)
            self._push_weights(engine)  # fails here, before training, if the server cannot reload
            return engine
        from apr.engine.local import LocalEngine

        return LocalEngine(
            self.policy, self.tok, max_slots=cfg.max_slots, max_len=self.rt.context, device=self.device, dtype=cfg.rollout_dtype
        )

    def _push_weights(self, engine=None) -> None:
        """Give the rollout engine the current policy."""
        engine = engine or self.engine
        if self.cfg.engine == "local":
            engine.load_weights(self.policy.state_dict())  # in place; drops caches of the old weights
            return
        path = self.out / "policy"
        if self.rank == 0:
            save_model(self.policy, self.tok, self.saved_info(), path)
        barrier(self.world)
        if self.rank == 0:
            try:
                engine.reload_weights(path.resolve())
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure to reload is fatal and must be named
                raise UserError(f"server could not reload weights: {type(e).__name__}: {e}") from None
        barrier(self.world)

    # ------------------------------------------------------------------ data

    def problems_for_step(self, step: int) -> list[tuple[int, Problem]]:
        """This rank's (dataset index, problem) pairs of global batch `step`."""
        per = self.cfg.batch_size // self.world
        mine = self.sampler.indices(step)[self.rank * per : (self.rank + 1) * per]
        return [(int(i), self.train_problems[i]) for i in mine]

    def rollout(self, step: int) -> tuple[list[Record], list[Problem]]:
        """G samples of each of this rank's problems; records sorted (problem, sample)."""
        G = self.cfg.group_size
        mine = self.problems_for_step(step)
        items = []
        for k, (_, prob) in enumerate(mine):
            for g in range(G):
                items.append(((self.rank * len(mine) + k) * G + g, prob))
        rt = dataclasses.replace(self.rt, seed=step_seed(self.cfg.seed, step))
        records = sorted(Runtime(self.engine, rt, self.tok).run(items), key=lambda r: r.index)
        return records, [p for _, p in items]

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        t0 = time.perf_counter()
        skip = None
        try:
            records, problems = self.rollout(step)
        except EngineError as e:
            records, problems, skip = [], [], f"engine failed during rollouts: {e}"
            self.engine.abort()
        t1 = time.perf_counter()
        rewards = []
        if skip is None:
            try:
                rewards = [float(self.reward_fn(r.to_json(), p)) for r, p in zip(records, problems)]
                if not all(math.isfinite(x) for x in rewards):
                    skip = "reward function returned a non-finite value"
            except Exception as e:  # noqa: BLE001 - a user reward may raise anything: skip the step, say why
                skip = f"reward function raised {type(e).__name__}: {e}"
        flag = all_sum(torch.tensor(float(skip is not None), device=self.device), self.world)
        if flag.item() > 0:  # every rank skips together
            self.step += 1
            return {"step": self.step, "skipped": skip or "another process skipped this step"}

        G = cfg.group_size
        adv = L.group_advantages(torch.tensor(rewards).view(-1, G), cfg.adv_eps).flatten().tolist()
        m = self.learner.learn(records, adv, self.step)
        t2 = time.perf_counter()
        self._push_weights()
        self.step += 1

        zero_groups = sum(1 for i in range(0, len(rewards), G) if len(set(rewards[i : i + G])) == 1)
        tot = all_sum_named({  # this rank's sums -> sums over ranks
            "reward": sum(rewards),
            "correct": sum(r.correct for r in records),
            "rollouts": len(records),
            "children": sum(r.children for r in records),
            "total_tokens": sum(r.total_tokens for r in records),
            "sequential_tokens": sum(r.sequential_tokens for r in records),
            **({"forced_tokens": sum(r.forced_tokens or 0 for r in records)} if self.rt.arithmetic == "exact" else {}),
            **m,  # learn(): loss, pg, kl, clipped, tokens (trained), entropy, sequences, ...
            "zero_groups": zero_groups,
            "rollout_s": t1 - t0,
            "learn_s": t2 - t1,
        }, self.world, self.device)
        n, tok, steps = max(tot["rollouts"], 1), max(tot["tokens"], 1), cfg.inner_steps
        rollout_s, learn_s = tot["rollout_s"] / self.world, tot["learn_s"] / self.world  # mean per process
        return {
            "step": self.step,
            "reward": tot["reward"] / n,
            "accuracy": tot["correct"] / n,
            "kl": tot["kl"] / tok,  # mean k3 per trained token over the inner steps
            "loss": tot["loss"] / steps,
            "pg_loss": tot["pg"] / steps,
            "clip_frac": tot["clipped"] / tok,
            "entropy": tot["entropy"] / max(tok / steps, 1),
            "children": tot["children"] / n,
            "total_tokens": tot["total_tokens"] / n,
            "sequential_tokens": tot["sequential_tokens"] / n,
            **({"forced_tokens": tot["forced_tokens"] / n} if "forced_tokens" in tot else {}),  # exact arithmetic
            "segments": tot["sequences"] / n,
            "trained_tokens": tot["tokens"] / steps,
            "zero_adv_groups": tot["zero_groups"] / max(cfg.batch_size, 1),
            "malformed_threads": int(tot["malformed_threads"]),
            "skipped_segments": int(tot["empty_segments"] + tot["long_segments"]),
            "rollout_s": rollout_s,
            "learn_s": learn_s,
            "rollout_tok_s": tot["total_tokens"] / max(rollout_s, 1e-9) / self.world,
            "train_tok_s": tot["train_tokens"] / max(learn_s, 1e-9) / self.world,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    @torch.no_grad()
    def validate(self) -> float:
        """Greedy accuracy on the first `val_limit` validation problems (rank 0)."""
        rt = dataclasses.replace(self.rt, temperature=0.0, top_k=0, top_p=1.0)
        recs = Runtime(self.engine, rt, self.tok).run(enumerate(self.val_problems))
        return sum(r.correct for r in recs) / max(1, len(recs))

    # ------------------------------------------------------------------ loop

    def train(self) -> Path:
        with out_of_memory_is_user_error(self.batch_what, ("micro_tokens",)):
            return self._train()

    def _train(self) -> Path:
        from tqdm import tqdm

        cfg, main = self.cfg, self.rank == 0
        if main:
            start_run(self.out, cfg, self.metrics, self.step, self.overwrite)
            log.info(f"rl: {self.method} model {cfg.init}, {len(self.train_problems)} training problems, "
                     f"{cfg.batch_size} x {cfg.group_size} rollouts per step, {self.world} process(es) on "
                     f"{self.device.type}")
        if cfg.eval_at_start and self.step == 0 and cfg.eval_every:
            self._validate_and_log()
        # A bar on a terminal; elsewhere (a log file) one status line per step.
        bar = tqdm(total=cfg.max_steps, initial=self.step, file=sys.stderr, unit="step", desc="rl",
                   disable=None if main and self.progress else True)
        step_line = log.debug if not bar.disable else log.info
        skipped_in_row = 0
        while self.step < cfg.max_steps:
            rec = self.train_step()
            skipped_in_row = skipped_in_row + 1 if "skipped" in rec else 0
            done = self.step == cfg.max_steps
            bar.update(1)
            if main:
                self.metrics.log(rec)
                if "skipped" in rec:
                    log.warning(f"rl: step {rec['step']} skipped: {rec['skipped']}")
                else:
                    bar.set_postfix(reward=f"{rec['reward']:.3f}", kl=f"{rec['kl']:.4f}", children=f"{rec['children']:.1f}")
                    step_line(f"rl: step {rec['step']}/{cfg.max_steps} reward {rec['reward']:.3f} kl {rec['kl']:.4f} "
                              f"children {rec['children']:.1f} rollout {rec['rollout_s']:.1f}s learn {rec['learn_s']:.1f}s")
            if skipped_in_row >= 3:
                raise UserError(f"3 steps in a row skipped; last reason: {rec['skipped']}")
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or done:
                self._validate_and_log()
            if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                self.save_checkpoint()
        bar.close()
        final = self.out / FINAL
        if main:
            save_model(self.policy, self.tok, self.saved_info(), final)  # apr.json preserved from `init`
        barrier(self.world)
        return final

    def _validate_and_log(self) -> None:
        if self.rank == 0:
            self.metrics.log({"step": self.step, "val_accuracy": self.validate()})
        barrier(self.world)

    # ------------------------------------------------------------------ checkpoints

    def _meta(self) -> dict:
        return {"step": self.step, "kind": "rl", "preset": self.info.preset, "tokenizer": self.fingerprint,
                "method": self.method, "init": str(Path(self.cfg.init).resolve()), **exact.identity(self.rt.arithmetic)}

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            state = {"model": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}
            save_checkpoint(self.out, self.step, state, self._meta(), self.cfg.keep_checkpoints)
        barrier(self.world)

    def _resume(self) -> None:
        now = self._meta()
        keys = ("kind", "preset", "tokenizer", "method", "arithmetic")  # arithmetic: only exact runs have it
        state = load_checkpoint(self.out, {k: now.get(k) for k in keys})
        load_states(state, {"model": self.policy, "optimizer": self.optimizer})
        self.step = state["step"]


def train_rl(config: RLConfig, resume: bool = False, reward_fn: RewardFn | None = None, progress: bool = True,
             overwrite: bool = False) -> Path:
    """Run GRPO from `config.init`; returns OUT_DIR/final. `progress`: a progress bar when
    stderr is a terminal (else a status line per step, at INFO). A folder holding a finished
    run is refused unless `overwrite` (which starts it over)."""
    trainer = RLTrainer(config, resume=resume, reward_fn=reward_fn, progress=progress, overwrite=overwrite)
    try:
        return trainer.train()
    finally:
        trainer.engine.close()
        end_processes(trainer.world)
