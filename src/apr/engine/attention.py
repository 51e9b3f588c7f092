"""Attention over the slotted KV cache: padded batches, and decode by spans of rows.

Caches are per layer `[slots, n_kv_heads, max_len + 1, head_dim]` (see llama.py).

`attend` is the plain path: every row reads the same `T` positions, masked per row. Prefill
uses it, and so does the CUDA decode path (CUDA graphs need one fixed shape per step).

`attend_spans` is the decode path on the CPU, where attention is memory-bound (it reads
every attended K/V cell once) and a call costs only tens of microseconds: the batch is cut
into spans of consecutive rows in consecutive slots, and each span reads its slots only up
to its own longest row, as a view of the cache (a gather would copy what it then reads).
The model runner chooses the spans (model_runner.plan_spans); a span may also read a shared
prefix from another slot (a parent's cache, see scheduler.py): its rows then attend
`[prefix slot, 0:P)` followed by `[own slot, P:t)`, the prefix read once for all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Span(NamedTuple):
    """Batch rows lo..hi-1 are cache slots slot..slot+hi-lo-1; they attend positions [0, t) of
    their slots, or [p_len, t) of their slots after [0, p_len) of slot p_slot (p_slot >= 0)."""

    lo: int
    hi: int
    slot: int
    t: int
    p_slot: int = -1
    p_len: int = 0
    ragged: bool = True  # rows of different lengths (masked); False: all rows have length t


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, n_kv: int) -> Tensor:
    """q [B, nq, S, hd]; k, v [B, nkv, T, hd]; mask [B, S, T] (True = attend) -> [B, S, nq * hd]."""
    B, nq, S, hd = q.shape
    g = nq // n_kv
    if S == 1:
        # Decode: the g query heads that share a KV head become g "queries" of that head
        # (they share one position, hence one mask row), so GQA reads K/V once without
        # repeating them. SDPA keeps scores in fp32 (a bf16 matmul would round them).
        qg = q.reshape(B, n_kv, g, hd)
        y = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask[:, None])  # mask [B, 1, 1, T]
        return y.reshape(B, 1, nq * hd)
    # Prefill: fused SDPA with an explicit per-row mask (rows start at different positions).
    if g > 1:
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    return y.transpose(1, 2).reshape(B, S, nq * hd)


def attend_spans(q: Tensor, kc: Tensor, vc: Tensor, spans: list[Span], mask: Tensor) -> Tensor:
    """Decode attention span by span. q [B, nq, 1, hd]; kc, vc one layer's cache; mask
    [B, 1, T_max] (True = attend, per row up to its own length) -> [B, 1, nq * hd]."""
    B, nq, _, hd = q.shape
    n_kv = kc.shape[1]
    qg = q.reshape(B, n_kv, nq // n_kv, hd)
    out = []
    for s in spans:
        n = s.hi - s.lo
        k, v = kc[s.slot:s.slot + n, :, s.p_len:s.t], vc[s.slot:s.slot + n, :, s.p_len:s.t]
        m = mask[s.lo:s.hi, :, s.p_len:s.t][:, None] if s.ragged else None
        if s.p_slot < 0:
            out.append(F.scaled_dot_product_attention(qg[s.lo:s.hi], k, v, attn_mask=m))
        else:
            out.append(_with_prefix(qg[s.lo:s.hi], k, v, m, kc[s.p_slot, :, :s.p_len], vc[s.p_slot, :, :s.p_len]))
    y = out[0] if len(out) == 1 else torch.cat(out)
    return y.reshape(B, 1, nq * hd)


def _with_prefix(q: Tensor, k: Tensor, v: Tensor, m: Tensor | None, kp: Tensor, vp: Tensor) -> Tensor:
    """Exact softmax attention over a shared prefix kp, vp [nkv, P, hd] followed by each
    row's own keys k, v [n, nkv, T, hd]; q [n, nkv, g, hd]. Scores of the two parts are
    concatenated before one softmax (no log-sum-exp merging), in fp32 like SDPA's."""
    n, n_kv, g, hd = q.shape
    P = kp.shape[1]
    qf = q.float() * hd ** -0.5
    own = qf @ k.float().transpose(-1, -2)  # [n, nkv, g, T]
    if m is not None:
        own = own.masked_fill(~m, float("-inf"))
    # Every row's queries against the prefix in one matmul per KV head: the prefix is read once.
    qp = qf.transpose(0, 1).reshape(n_kv, n * g, hd)
    pre = (qp @ kp.float().transpose(-1, -2)).view(n_kv, n, g, P).transpose(0, 1)  # [n, nkv, g, P]
    p = torch.softmax(torch.cat([pre, own], dim=-1), dim=-1)
    y_own = p[..., P:] @ v.float()
    y_pre = (p[..., :P].transpose(0, 1).reshape(n_kv, n * g, P) @ vp.float()).view(n_kv, n, g, hd).transpose(0, 1)
    return (y_pre + y_own).to(q.dtype)
