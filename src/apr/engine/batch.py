"""Per-row state of the decode batch as tensors, so a step does no Python work per sequence
beyond appending its token.

With hundreds of live sequences the host side of a step (building inputs from lists, one
sampling-parameter tuple per row, a stop-string check per row) grows with the rows. Here
each slot's newest token, position, sampling parameters and limits live in tensors written
once per request (`SlotState`); the live rows' slot indices and attention spans are rebuilt
only when the set of rows changes (`DecodeBatch`). Which rows may have finished is decided
on tokens (finish.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from apr.engine.attention import Span, plan_spans
from apr.engine.scheduler import Seq


class SlotState:
    """Per-slot decode state on the device: `ints[slot]` = (newest token, its position, last
    position the length limit allows, stop group, top_k, 32-bit seed), `floats[slot]` =
    (temperature, top_p). Written when a sequence gets its first token; each decode step
    gathers the live rows' state and writes their new tokens back."""

    def __init__(self, max_slots: int, device):
        self.device = device
        self.ints = torch.zeros(max_slots, 6, dtype=torch.int64, device=device)
        self.floats = torch.zeros(max_slots, 2, dtype=torch.float32, device=device)

    def begin(self, seqs: list[Seq], toks: Tensor) -> None:
        """`seqs` (prompt prefilled) sampled their first tokens `toks`."""
        idx = torch.tensor([s.slot for s in seqs], device=self.device)
        sp = [s.req.sampling for s in seqs]
        rows = torch.tensor([(0, len(s.ids), s.end_pos, s.stop_group, p.top_k, (p.seed ^ (p.seed >> 32)) & 0xFFFFFFFF)
                             for s, p in zip(seqs, sp)], dtype=torch.int64).to(self.device)
        rows[:, 0] = toks
        self.ints[idx] = rows
        self.floats[idx] = torch.tensor([(p.temperature, p.top_p) for p in sp], dtype=torch.float32).to(self.device)


class DecodeBatch:
    """The decoding rows (slot order): their slots as a tensor, attention spans and the
    attended length, kept while the same sequences decode (a step only shifts them)."""

    def __init__(self, seqs: list[Seq], device, span_cost: int | None):
        self.seqs = seqs
        self.slots = [s.slot for s in seqs]
        self.idx = torch.tensor(self.slots, dtype=torch.int64).to(device)
        kinds = {s.sampling for s in seqs}
        self.exact = [(i, s.exact) for i, s in enumerate(seqs) if s.exact is not None]  # (row, ExactRow)
        self.sampled, self.filtered = max(kinds) > 0, 2 in kinds
        lens = [len(s.ids) + len(s.gen) for s in seqs]  # positions each row attends, the new token's included
        self.t_max = max(lens)
        pre = [(s.p_slot, s.p_len) for s in seqs] if any(s.p_slot >= 0 for s in seqs) else None
        self.spans: list[Span] | None = plan_spans(self.slots, lens, span_cost, pre) if span_cost is not None else None
        self.prefix: Tensor | None = None  # [B, 2] shared prefixes (slot, length), for decode without spans
        if pre is not None and self.spans is None:
            self.prefix = torch.tensor([(p if p >= 0 else s, n) for (p, n), s in zip(pre, self.slots)],
                                       dtype=torch.int64).to(device)

    def same_rows(self, seqs: list[Seq]) -> bool:
        return len(seqs) == len(self.seqs) and all(a is b for a, b in zip(seqs, self.seqs))

    def advance(self) -> None:
        """Every row was fed its token: the next step attends one position more."""
        self.t_max += 1
        if self.spans is not None:
            self.spans = [s._replace(t=s.t + 1) for s in self.spans]
