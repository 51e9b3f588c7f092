"""GRPO over spawn/join rollouts: group advantages, per-segment token masks, the clipped loss.

A rollout is one runtime record: a thread tree. Every segment of every thread (the parent
before a spawn, the parent after each join, every child) is one training sequence carrying
the rollout's advantage. Only tokens the model generated in that segment are trained:
not the prompt, not text of earlier segments (already trained in their own sequence), not
join text the runtime inserted, and not tokens the engine forced under exact arithmetic (the
results of operation lines: not the model's choices, so neither gradient nor KL). The loss
of a batch is

    L = 1/N  sum_rollouts  1/S_i  sum_segments  1/|T_s|  sum_{t in T_s}  l_t
    l_t = -min(rho_t A_i, clip(rho_t, 1-eps, 1+eps) A_i) + beta * k3_t
    rho_t = exp(logp_t - logp_old_t),   k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1

with N the rollouts in the (global) batch, S_i the trainable segments of rollout i and
T_s the trained tokens of segment s. We fold 1/(N S_i |T_s|) into one weight per token,
so any split into micro-batches or processes sums to the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from apr import protocol as P


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """(r - mean) / (std + eps) within each group (rows of [groups, G]). An all-equal group
    gets exactly zero advantage; std is the sample std (as TRL's GRPO)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    adv = (rewards - mean) / (std + eps)
    return torch.where(std > 0, adv, torch.zeros_like(adv))


@dataclass
class Sequence:
    """One segment as tokens: `ids` = BOS + text (+ EOS when the model generated it);
    `trained[j]` says whether ids[j] is a generated token (a loss target)."""

    ids: list[int]
    trained: list[bool]
    rollout: int  # index of the rollout in the batch
    thread: str  # thread id, for diagnostics

    @property
    def n_trained(self) -> int:
        return sum(self.trained)


def thread_strings(thread: P.Thread) -> list[tuple[P.TrainingString, bool]]:
    """One thread's training strings (its own segments, not its children's), each with
    whether the segment ended in an EOS the model generated."""
    strings = thread.strings()
    out = []
    for i, ts in enumerate(strings):
        last = i == len(strings) - 1
        # A finished thread's last segment stopped at EOS (the spawn stop string is the only
        # other stop, and it ends a segment that spawned); cut or failed threads never emit EOS.
        eos = last and thread.status == "done" and not ts.text.rstrip("\n").endswith(P.SPAWN_END)
        out.append((ts, eos))
    return out


def encode_segment(ts: P.TrainingString, eos: bool, tokenizer) -> tuple[list[int], list[bool]]:
    """BOS + tokens (+ EOS); a token is trained when it starts at or after `new_from` (this
    segment's own text) and overlaps no inserted span (join text) and no forced span (exact
    arithmetic: the engine wrote it, so it carries no policy gradient and no KL)."""
    enc = tokenizer(ts.text, add_special_tokens=False, return_offsets_mapping=True)
    trained = []
    for start, end in enc["offset_mapping"]:
        end = max(end, start + 1)
        ok = (start >= ts.new_from and start >= ts.prompt_end
              and not any(start < b and end > a for a, b in ts.inserted + ts.forced))
        trained.append(ok)
    ids = [tokenizer.bos_token_id, *enc["input_ids"]]
    trained = [False, *trained]
    if eos:
        ids.append(tokenizer.eos_token_id)
        trained.append(True)
    return ids, trained


@dataclass
class BuildStats:
    segments: int = 0
    malformed_threads: int = 0  # threads whose record could not be read (skipped)
    empty_segments: int = 0  # segments with nothing generated (skipped)
    long_segments: int = 0  # segments longer than the learner's max length (skipped)


def rollout_sequences(threads: dict | None, rollout: int, tokenizer, max_len: int, stats: BuildStats) -> list[Sequence]:
    """All trainable segments of one rollout (`Record.threads`). A malformed thread (or one
    segment too long or empty) is skipped; the rollout's other threads still train."""
    if not isinstance(threads, dict):
        return []
    out = []
    for thread in P.Thread.from_json(threads).walk():
        if thread.malformed:
            stats.malformed_threads += 1
            continue
        for ts, eos in thread_strings(thread):
            ids, trained = encode_segment(ts, eos, tokenizer)
            if not any(trained):
                stats.empty_segments += 1
            elif len(ids) > max_len:
                stats.long_segments += 1
            else:
                out.append(Sequence(ids, trained, rollout, thread.id))
                stats.segments += 1
    return out


def token_weights(seqs: list[Sequence], n_rollouts: int) -> list[float]:
    """Per-sequence weight of each trained token: 1 / (N * S_i * |T_s|)."""
    per_rollout: dict[int, int] = {}
    for s in seqs:
        per_rollout[s.rollout] = per_rollout.get(s.rollout, 0) + 1
    return [1.0 / (n_rollouts * per_rollout[s.rollout] * s.n_trained) for s in seqs]


@dataclass
class Batch:
    """Right-padded sequences: targets and per-token weights are pre-shifted ([B, T-1])."""

    input_ids: Tensor  # [B, T]
    attention_mask: Tensor  # [B, T]
    targets: Tensor  # [B, T-1] ids[1:]
    weight: Tensor  # [B, T-1] loss weight (0 where not trained)
    adv: Tensor  # [B] the rollout's advantage
    n_tokens: int  # real (unpadded) tokens

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.targets, self.weight, self.adv)), self.n_tokens)


def collate(seqs: list[Sequence], weights: list[float], advs: list[float], pad_id: int) -> Batch:
    T = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    w = torch.zeros((len(seqs), T - 1))
    for i, (s, wt) in enumerate(zip(seqs, weights)):
        n = len(s.ids)
        ids[i, :n] = torch.tensor(s.ids)
        mask[i, :n] = 1
        w[i, : n - 1] = torch.tensor(s.trained[1:], dtype=torch.float) * wt
    return Batch(ids, mask, ids[:, 1:].clone(), w, torch.tensor(advs, dtype=torch.float), sum(len(s.ids) for s in seqs))


def micro_batches(seqs: list[Sequence], max_tokens: int) -> list[list[int]]:
    """Indices of sequences grouped by length so padded rows x length <= max_tokens."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * len(seqs[i].ids) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def token_logprobs(model, batch: Batch, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log p(target) per position [B, T-1] (and the entropy of each position's distribution)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logp_all = F.log_softmax(logits[:, :-1].float(), dim=-1)
    logp = logp_all.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


def grpo_token_terms(logp: Tensor, old_logp: Tensor, ref_logp: Tensor, adv: Tensor, clip: float):
    """Per-token (policy loss, k3 KL, clipped?) for advantages broadcast over tokens."""
    a = adv.unsqueeze(-1) if adv.dim() == logp.dim() - 1 else adv
    ratio = torch.exp(logp - old_logp)
    pg = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    d = ref_logp - logp
    kl = torch.exp(d) - d - 1
    clipped = ((ratio > 1 + clip) & (a > 0)) | ((ratio < 1 - clip) & (a < 0))
    return pg, kl, clipped


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor, batch: Batch, clip: float, kl_coef: float):
    """The batch's share of L (a scalar to backward) and detached sums for metrics."""
    pg, kl, clipped = grpo_token_terms(logp, old_logp, ref_logp, batch.adv, clip)
    w = batch.weight
    loss = (w * (pg + kl_coef * kl)).sum()
    m = w > 0
    sums = {
        "pg": (w * pg).sum().detach(),
        "kl": (kl * m).sum().detach(),
        "clipped": (clipped & m).sum().detach().float(),
        "tokens": m.sum().detach().float(),
    }
    return loss, sums
