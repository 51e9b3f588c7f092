"""The learning half of a GRPO step (apr.train.grpo): rollouts and their advantages in,
`inner_steps` AdamW steps on the policy out.

Every thread segment of a rollout is one sequence weighted by its rollout's advantage
(`rl_loss`: sequences, token weights, micro-batches, the PPO-clipped loss with a k3 KL to
the frozen reference). The old log-probs are the policy's before the first inner step: the
forward of inner step 0, detached (same weights, so no extra pass). Under torchrun each
rank learns on its own rollouts and the gradients are summed with one all-reduce (the token
weights already carry the global 1/N), so ranks may run different numbers of micro-batches.
"""

from __future__ import annotations

import torch

from apr.records import Record
from apr.train import rl_loss as L
from apr.train.common import all_sum, all_sum_grads, warmup_constant
from apr.train.config import RLConfig


class Learner:
    """The policy, its frozen reference and the optimizer, as the trainer made them (it
    saves and resumes them; this class only steps them)."""

    def __init__(self, cfg: RLConfig, policy, ref, optimizer: torch.optim.Optimizer, tok, max_len: int,
                 device: torch.device, world: int, autocast):
        self.cfg, self.policy, self.ref, self.optimizer, self.tok = cfg, policy, ref, optimizer, tok
        self.max_len, self.device, self.world, self.autocast = max_len, device, world, autocast

    def learn(self, records: list[Record], advantages: list[float], step: int) -> dict:
        """`inner_steps` optimizer steps on this batch at RL step `step` (it sets the lr);
        returns metric sums of this rank."""
        cfg = self.cfg
        n_global = cfg.batch_size * cfg.group_size
        stats = L.BuildStats()
        seqs: list[L.Sequence] = []
        for i, rec in enumerate(records):
            if cfg.skip_zero_advantage and advantages[i] == 0:
                continue
            seqs.extend(L.rollout_sequences(rec.threads, i, self.tok, self.max_len, stats))
        weights = L.token_weights(seqs, n_global)
        batches = [
            L.collate([seqs[j] for j in idx], [weights[j] for j in idx], [advantages[seqs[j].rollout] for j in idx],
                      self.tok.pad_token_id).to(self.device)
            for idx in L.micro_batches(seqs, cfg.micro_tokens)
        ]
        ref_logps = []
        with torch.no_grad(), self.autocast:
            for b in batches:
                ref_logps.append(L.token_logprobs(self.ref, b)[0])
        n_seqs = all_sum(torch.tensor(float(len(seqs)), device=self.device), self.world).item()
        old_logps: list[torch.Tensor] = []
        sums = {k: torch.zeros((), device=self.device) for k in ("loss", "pg", "kl", "clipped", "tokens", "entropy")}
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for k in range(cfg.inner_steps if n_seqs > 0 else 0):  # nothing to learn from: no step
            self.optimizer.zero_grad(set_to_none=True)
            for j, b in enumerate(batches):
                with self.autocast:
                    logp, ent = L.token_logprobs(self.policy, b, with_entropy=k == 0)
                if k == 0:
                    old_logps.append(logp.detach())  # = the rollout policy's log-probs (recomputed)
                loss, s = L.grpo_loss(logp, old_logps[j], ref_logps[j], b, cfg.clip, cfg.kl_coef)
                loss.backward()
                sums["loss"] += loss.detach()
                for key in ("pg", "kl", "clipped", "tokens"):
                    sums[key] += s[key]
                if ent is not None:
                    sums["entropy"] += (ent * (b.weight > 0)).sum()
            for p in params:  # a rank with no sequences still takes part in the all-reduce
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            all_sum_grads(params, self.world)  # token weights carry the global 1/N already
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            for group in self.optimizer.param_groups:  # the step number alone sets the lr: exact resume
                group["lr"] = cfg.lr * warmup_constant(step, cfg.warmup_steps)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        train_tokens = sum(b.n_tokens for b in batches)
        return {
            **{k: v.item() for k, v in sums.items()},
            "sequences": len(seqs),
            "train_tokens": float(train_tokens * (cfg.inner_steps + 1)),  # policy passes + the reference pass
            **{k: getattr(stats, k) for k in ("malformed_threads", "empty_segments", "long_segments")},
        }
