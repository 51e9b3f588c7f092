"""Which request runs in which KV-cache slot: the queue, the live slots and the kept caches.

A request waits in the queue until a slot is free. A finished request with a `cache_key`
keeps its slot's cache; kept slots count as free and are evicted, least recently kept
first, when a new request needs a slot. A request whose `cache_key` has a kept cache takes
that slot and rolls back to the longest common token prefix, so only the rest is
prefilled. New requests take the lowest free slot, so live slots stay packed (the model
runner decodes slots `0..hi` as a view of the cache when most of them are live).

No tensors here: the scheduler only tracks token ids and slot numbers.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from apr.engine.base import Request, common_prefix_len


@dataclass
class Seq:
    """One request's state from admission to completion."""

    req: Request
    ids: list[int]  # prompt token ids
    slot: int = -1
    cached: int = 0  # prompt tokens reused from a kept cache
    pos: int = 0  # next prompt position to prefill
    gen: list[int] = field(default_factory=list)
    budget: int = 0  # max new tokens (max_tokens clipped to the cache length)
    first_time: float = 0.0
    stop_last: frozenset = frozenset()  # last characters of the stop strings
    stop_window: int = 0  # tokens decoded to look for a stop string
    order: int = 0  # submission number: requests finishing in one step complete in this order
    end_pos: int = 0  # position of the last token the length limit allows
    stop_group: int = 0  # its stop strings' row in the engine's FinishTable
    sampling: int = 0  # 0 greedy, 1 sampled, 2 sampled with top-k / top-p

    @property
    def cache_len(self) -> int:
        # KV is in the cache for the prompt and every generated token but the newest.
        return len(self.ids) + max(len(self.gen) - 1, 0)


class Scheduler:
    def __init__(self, max_slots: int):
        self.max_slots = max_slots
        self.queue: deque[Seq] = deque()
        self.live: list[Seq | None] = [None] * max_slots
        self.kept: OrderedDict[str, int] = OrderedDict()  # cache_key -> slot, LRU order
        self.slot_tokens: list[list[int]] = [[] for _ in range(max_slots)]  # tokens in a kept cache
        self.submitted = 0

    # ---- counts ------------------------------------------------------------------
    def n_live(self) -> int:
        return self.max_slots - self.live.count(None)

    def free_slots(self) -> int:
        # Kept caches count as free: they are evicted (LRU) when a slot is needed.
        return max(self.max_slots - self.n_live() - len(self.queue), 0)

    def busy(self) -> bool:
        return bool(self.queue) or self.n_live() > 0

    def decoding(self) -> list[Seq]:
        """Live sequences past prefill (they have a token to feed), in slot order."""
        return [s for s in self.live if s is not None and s.gen]

    # ---- admission ---------------------------------------------------------------
    def add(self, seq: Seq) -> None:
        self.submitted += 1
        seq.order = self.submitted
        self.queue.append(seq)

    def admit(self) -> list[Seq]:
        """Move queued sequences into slots while there is room; return those admitted.

        Sequences with a kept cache take its slot first; the others take free slots longest
        prompt first, so rows admitted together lie in slots by decreasing length and decode
        attention reads them in few spans (model_runner.plan_spans)."""
        if not self.queue:
            return []
        room = self.max_slots - self.n_live()
        admitted, fresh = [], []
        while self.queue and room > 0:
            seq, room = self.queue.popleft(), room - 1
            slot = self.kept.pop(seq.req.cache_key, None) if seq.req.cache_key is not None else None
            if slot is None:
                fresh.append(seq)
                continue
            toks, self.slot_tokens[slot] = self.slot_tokens[slot], []
            admitted.append(self._place(seq, slot, toks))
        if fresh:
            kept_slots = set(self.kept.values())
            free = [i for i in range(self.max_slots) if self.live[i] is None and i not in kept_slots]
            free.reverse()  # pop() gives the lowest free slot: it keeps decode rows packed
            for seq in sorted(fresh, key=lambda s: -len(s.ids)):  # stable: FIFO among equals
                admitted.append(self._place(seq, free.pop() if free else self._evict(), []))
        return admitted

    def _place(self, seq: Seq, slot: int, toks: list[int]) -> Seq:
        seq.slot = slot
        # Roll back to the longest common prefix; always prefill >= 1 token for logits.
        seq.cached = min(common_prefix_len(toks, seq.ids), len(seq.ids) - 1)
        seq.pos = seq.cached
        self.live[slot] = seq
        return seq

    def _evict(self) -> int:
        """The slot of the least recently kept cache, dropped (the caller checked one exists)."""
        _, slot = self.kept.popitem(last=False)
        self.slot_tokens[slot] = []
        return slot

    # ---- leaving -----------------------------------------------------------------
    def finish(self, seq: Seq) -> None:
        """Free a finished sequence's slot, keeping its cache under its `cache_key` if any."""
        self.live[seq.slot] = None
        key = seq.req.cache_key
        if key is not None:
            old = self.kept.pop(key, None)
            if old is not None:
                self.slot_tokens[old] = []
            self.kept[key] = seq.slot
            self.slot_tokens[seq.slot] = (seq.ids + seq.gen)[:seq.cache_len]

    def release(self, cache_key: str) -> None:
        slot = self.kept.pop(cache_key, None)
        if slot is not None:
            self.slot_tokens[slot] = []

    def release_all(self) -> None:
        for k in list(self.kept):
            self.release(k)

    def cancel(self, request_id: str) -> bool:
        for s in self.queue:
            if s.req.id == request_id:
                self.queue.remove(s)
                return True
        for i, s in enumerate(self.live):
            if s is not None and s.req.id == request_id:
                self.live[i] = None  # its slot's cache is garbage now: nothing keeps it
                self.slot_tokens[i] = []
                return True
        return False

    def abort(self) -> None:
        """Drop every queued and running sequence; kept caches stay."""
        self.queue.clear()
        self.live = [None] * self.max_slots

    def clear(self) -> None:
        self.abort()
        self.kept.clear()
