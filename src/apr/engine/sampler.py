"""Token sampling for the local engine: greedy, temperature, top-k, top-p.

Sampling is Gumbel-max with counter-based noise hashed from (seed, position, token id) on
device, so a request's sample depends only on its own seed and logits, never on the batch
it shared a step with or on its slot.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apr.engine.base import SamplingParams

_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(seed: Tensor, pos: Tensor, vocab_hash: Tensor) -> Tensor:
    """Gumbel(0, 1) noise [B, V] that depends only on (seed[b], pos[b], token id)."""
    h = _mix32(_mix32(seed ^ 0x9E3779B9) ^ pos)  # [B]
    x = _mix32(h[:, None] ^ vocab_hash[None, :])  # [B, V]
    u = ((x >> 8).float() + 0.5) * (1.0 / (1 << 24))  # uniform in (0, 1)
    return -torch.log(-torch.log(u))


def vocab_hash(vocab_size: int, device) -> Tensor:
    return _mix32(torch.arange(vocab_size, device=device, dtype=torch.int64) + 0x632BE5AB)


def sample(
    logits: Tensor,  # [B, V] fp32
    temperature: Tensor,  # [B] fp32, 0 = greedy
    top_k: Tensor,  # [B] int64, 0 = off
    top_p: Tensor,  # [B] fp32
    seed: Tensor,  # [B] int64 in [0, 2^32)
    pos: Tensor,  # [B] int64, position of the token being sampled
    vhash: Tensor,  # [V] from vocab_hash
    filtered: bool = True,  # False when no row uses top-k / top-p (skips the sort)
) -> Tensor:
    greedy = logits.argmax(-1)
    l = logits / temperature.clamp(min=1e-5)[:, None]
    if filtered:
        V = l.shape[-1]
        sl, idx = l.sort(dim=-1, descending=True)
        k = torch.where(top_k > 0, top_k, V)
        keep = torch.arange(V, device=l.device)[None, :] < k[:, None]
        sl = sl.masked_fill(~keep, float("-inf"))
        p = torch.softmax(sl, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        keep &= (p.cumsum(-1) - p) < top_p[:, None]
        sl = sl.masked_fill(~keep, float("-inf"))
        l = torch.empty_like(l).scatter_(-1, idx, sl)
    drawn = (l + gumbel_noise(seed, pos, vhash)).argmax(-1)
    return torch.where(temperature > 0, drawn, greedy)


def next_tokens(logits: Tensor, params: list[SamplingParams], positions: list[int], vhash: Tensor) -> Tensor:
    """One token per row of logits [B, V] (a tensor: the caller syncs once), row b drawn with
    params[b] at positions[b] (the position of the token being sampled)."""
    if all(p.temperature <= 0 for p in params):
        return logits.argmax(-1)
    dev = logits.device
    f = torch.tensor([[p.temperature, p.top_p] for p in params], dtype=torch.float32).to(dev)
    i = torch.tensor([[p.top_k, (p.seed ^ (p.seed >> 32)) & _M32, pos] for p, pos in zip(params, positions)],
                     dtype=torch.int64).to(dev)
    filtered = any(p.top_k > 0 or p.top_p < 1.0 for p in params if p.temperature > 0)
    return sample(logits, f[:, 0], i[:, 0], f[:, 1], i[:, 1], i[:, 2], vhash, filtered)
