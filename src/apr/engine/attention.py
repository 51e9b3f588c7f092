"""Attention over the slotted KV cache: padded batches, and decode by spans of rows.

Caches are per layer `[slots, n_kv_heads, max_len + 1, head_dim]` (see llama.py).

`attend` is the plain path: every row reads the same `T` positions, masked per row. Prefill
uses it, and so does the CUDA decode path (CUDA graphs need one fixed shape per step).

`attend_spans` is the decode path on the CPU, where attention is memory-bound (it reads
every attended K/V cell once) and a call costs only tens of microseconds: the batch is cut
into spans of rows in a range of slots, and each span reads its slots only up to its own
longest row, as a view of the cache (a gather would copy what it then reads).
`plan_spans` chooses them; a span may also read a shared
prefix from another slot (a parent's cache, see scheduler.py): its rows then attend
`[prefix slot, 0:P)` followed by `[own slot, P:t)`, the prefix read once for all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Span(NamedTuple):
    """Batch rows lo..hi-1 live in cache slots slot..slot+n-1 (n >= hi - lo: a span may cover
    idle slots, "holes"); they attend positions [0, t) of their slots, or [p_len, t) of their
    slots after [0, p_len) of slot p_slot (p_slot >= 0)."""

    lo: int
    hi: int
    slot: int
    t: int
    p_slot: int = -1
    p_len: int = 0
    ragged: bool = True  # rows of different lengths (masked); False: all rows have length t
    qidx: Tensor | None = None  # with holes: the batch row of each slot (B = a hole: zero query)
    keep: Tensor | None = None  # with holes: which of the n slots are live rows


def plan_spans(slots: list[int], lens: list[int], cost: int,
               prefixes: list[tuple[int, int]] | None = None) -> list[Span]:
    """Cut decode rows (slot order; `lens` = positions each row attends; `prefixes` = each
    row's shared prefix (slot, length), (-1, 0) for none) into spans. A span reads each of its
    slots up to its longest row, idle slots between its rows included; a new span starts when
    the rows' prefixes differ or when staying would waste more than `cost` row-positions in
    this span (about what one more attention call costs, in cache reads)."""
    B = len(lens)
    spans: list[Span] = []
    lo, top, low, waste = 0, lens[0], lens[0], 0
    for i in range(1, B + 1):  # plain comparisons, not max/min: this runs per row when rows change
        if i < B:
            t, prev = lens[i], slots[i - 1]
            extra = top - t if t <= top else (prev - slots[lo] + 1) * (t - top)
            if slots[i] != prev + 1:  # idle slots in between, read up to the span's length
                extra += (slots[i] - prev - 1) * (t if t > top else top)
            if waste + extra <= cost and (prefixes is None or prefixes[i] == prefixes[lo]):
                waste += extra
                if t > top:
                    top = t
                elif t < low:
                    low = t
                continue
        spans.append(_span(slots, lo, i, top, low < top, prefixes[lo] if prefixes else (-1, 0), B))
        if i < B:
            lo, top, low, waste = i, t, t, 0
    return spans


def _span(slots: list[int], lo: int, hi: int, t: int, ragged: bool, pre: tuple[int, int], B: int) -> Span:
    n = slots[hi - 1] - slots[lo] + 1
    if n == hi - lo:
        return Span(lo, hi, slots[lo], t, pre[0], pre[1], ragged)
    qidx = [B] * n
    for i in range(lo, hi):
        qidx[slots[i] - slots[lo]] = i
    keep = [slots[i] - slots[lo] for i in range(lo, hi)]
    return Span(lo, hi, slots[lo], t, pre[0], pre[1], ragged, torch.tensor(qidx), torch.tensor(keep))


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
    qpad = mpad = None
    out = []
    for s in spans:
        if s.qidx is None:
            qs, ms = qg[s.lo:s.hi], mask[s.lo:s.hi]
        else:  # holes: their rows get a zero query, attend everything, and are dropped
            if qpad is None:
                qpad = torch.cat([qg, qg.new_zeros(1, *qg.shape[1:])])
                mpad = torch.cat([mask, mask.new_ones(1, *mask.shape[1:])])
            qs, ms = qpad[s.qidx], mpad[s.qidx]
        n = qs.shape[0]
        k, v = kc[s.slot:s.slot + n, :, s.p_len:s.t], vc[s.slot:s.slot + n, :, s.p_len:s.t]
        m = ms[:, :, s.p_len:s.t][:, None] if s.ragged else None
        if s.p_slot < 0:
            y = F.scaled_dot_product_attention(qs, k, v, attn_mask=m)
        else:
            y = _with_prefix(qs, k, v, m, kc[s.p_slot, :, :s.p_len], vc[s.p_slot, :, :s.p_len])
        out.append(y if s.keep is None else y[s.keep])
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
