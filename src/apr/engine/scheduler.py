"""Which request runs in which KV-cache slot: the queue, the live slots and the kept caches.

A request waits in the queue until a slot is free. A finished request with a `cache_key`
keeps its slot's cache; kept slots count as free and are evicted, least recently kept
first, when a new request needs a slot. A request whose `cache_key` has a kept cache takes
that slot and rolls back to the longest common token prefix, so only the rest is
prefilled. New requests take the lowest free slot, longest prompt first.

Shared prefixes: a request whose `prefix_key` names a kept cache (its parent's) reads the
common token prefix P from that slot in place (`p_slot`, `p_len`): it prefills and writes
only positions >= P of its own slot. The parent's slot is pinned while anyone reads it
(`readers`: the P of each live sequence or kept cache reading it): it is not evicted, and
a request that would overwrite positions some reader still reads (its own cache_key,
rolling back below a reader's P) gets a fresh slot with the prefix copied instead
(copy-on-write, `copy_from`); the old slot is freed when its last reader goes. A kept cache
of a reader keeps its reference. With `share=False` (CUDA: graphs decode every row from
its own slot) the prefix is always copied.

No tensors here: the scheduler only tracks token ids and slot numbers; the engine performs
the copies (`Seq.copy_from`) before any forward.
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
    p_slot: int = -1  # positions [0, p_len) are read from slot p_slot (a shared prefix)
    p_len: int = 0
    copy_from: tuple[int, int] | None = None  # (slot, n): copy its first n positions before prefill
    exact: object | None = None  # exact arithmetic: its engine.exact.ExactRow

    @property
    def cache_len(self) -> int:
        # KV is in the cache for the prompt and every generated token but the newest.
        return len(self.ids) + max(len(self.gen) - 1, 0)


NO_PREFIX = (-1, 0)


class Scheduler:
    def __init__(self, max_slots: int, share: bool = True, stats: dict | None = None):
        self.max_slots, self.share = max_slots, share
        self.stats = stats if stats is not None else {}  # counts of shared and copied prefix tokens
        self.queue: deque[Seq] = deque()
        self.live: list[Seq | None] = [None] * max_slots
        self.kept: OrderedDict[str, int] = OrderedDict()  # cache_key -> slot, LRU order
        self.slot_tokens: list[list[int]] = [[] for _ in range(max_slots)]  # tokens in a kept cache
        self.slot_prefix = [NO_PREFIX] * max_slots  # a kept cache's shared prefix (slot, length)
        self.readers: list[list[int]] = [[] for _ in range(max_slots)]  # P of each reader of a slot
        self.pinned: set[int] = set()  # slots with readers
        self.submitted = 0

    # ---- counts ------------------------------------------------------------------
    def n_live(self) -> int:
        return self.max_slots - self.live.count(None)

    def _room(self) -> int:
        """Slots a new sequence could take: free ones and kept caches nobody reads."""
        return self.max_slots - self.n_live() - sum(self.live[p] is None for p in self.pinned)

    def free_slots(self) -> int:
        # Kept caches count as free: they are evicted (LRU) when a slot is needed.
        return max(self._room() - len(self.queue), 0)

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
        attention reads them in few spans (attention.plan_spans)."""
        if not self.queue:
            return []
        room = self._room()
        admitted, fresh = [], []
        while self.queue and room > 0:
            seq, room = self.queue.popleft(), room - 1
            slot = self.kept.pop(seq.req.cache_key, None) if seq.req.cache_key is not None else None
            if slot is not None:
                toks, self.slot_tokens[slot] = self.slot_tokens[slot], []
                seq.cached = min(common_prefix_len(toks, seq.ids), len(seq.ids) - 1)
                ps, P = self.slot_prefix[slot]
                self._drop_prefix(slot)
                if self.readers[slot] and max(self.readers[slot]) > seq.cached:
                    # Readers still need what we would overwrite. (A slot others read never
                    # reads a prefix itself: readers are sent to the root's slot.)
                    seq.copy_from = (slot, seq.cached)
                    self._count("cow_copied", seq.cached)
                    fresh.append(seq)
                    continue
                if ps >= 0 and seq.cached > 0:  # a kept reader's cache: keep reading its prefix
                    self._read(seq, ps, min(P, seq.cached))
                admitted.append(self._place(seq, slot))
                continue
            pslot = self.kept.get(seq.req.prefix_key) if seq.req.prefix_key is not None else None
            if pslot is not None:
                n = min(common_prefix_len(self.slot_tokens[pslot], seq.ids), len(seq.ids) - 1)
                ps, P = self.slot_prefix[pslot]
                if ps >= 0:  # the parent reads its own prefix: share only that part
                    pslot, n = ps, min(n, P)
                if n > 0:
                    seq.cached = n
                    evictable = pslot not in self.pinned  # reading it pins it: one slot less to take
                    if self.share and room >= evictable:
                        room -= evictable
                        self._read(seq, pslot, n)
                        self._count("prefix_shared", n)
                    else:  # (or it may take that very slot: the copy is then a no-op)
                        seq.copy_from = (pslot, n)
                        self._count("prefix_copied", n)
            fresh.append(seq)
        if fresh:
            kept_slots = set(self.kept.values())
            free = [i for i in range(self.max_slots)
                    if self.live[i] is None and i not in kept_slots and i not in self.pinned]
            free.reverse()  # pop() gives the lowest free slot: it keeps decode rows packed
            for seq in sorted(fresh, key=lambda s: -len(s.ids)):  # stable: FIFO among equals
                admitted.append(self._place(seq, free.pop() if free else self._evict()))
        return admitted

    def _count(self, key: str, n: int) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _place(self, seq: Seq, slot: int) -> Seq:
        seq.slot = slot
        # Always prefill >= 1 token (seq.cached < len(ids)), for the first token's logits.
        seq.pos = seq.cached
        self.live[slot] = seq
        return seq

    def _read(self, seq: Seq, slot: int, n: int) -> None:
        seq.p_slot, seq.p_len = slot, n
        self.readers[slot].append(n)
        self.pinned.add(slot)

    def _unread(self, slot: int, n: int) -> None:
        self.readers[slot].remove(n)
        if not self.readers[slot]:
            self.pinned.discard(slot)

    def _drop_prefix(self, slot: int) -> None:
        """A kept cache stops reading its shared prefix (released, evicted or taken)."""
        ps, P = self.slot_prefix[slot]
        if ps >= 0:
            self._unread(ps, P)
            self.slot_prefix[slot] = NO_PREFIX

    def _evict(self) -> int:
        """The slot of the least recently kept cache nobody reads, dropped (admit counted it)."""
        key = next(k for k, slot in self.kept.items() if slot not in self.pinned)
        slot = self.kept.pop(key)
        self.slot_tokens[slot] = []
        self._drop_prefix(slot)
        return slot

    # ---- leaving -----------------------------------------------------------------
    def finish(self, seq: Seq) -> None:
        """Free a finished sequence's slot, keeping its cache under its `cache_key` if any
        (with its shared-prefix reference: the kept cache still reads it)."""
        self.live[seq.slot] = None
        key = seq.req.cache_key
        if key is None:
            if seq.p_slot >= 0:
                self._unread(seq.p_slot, seq.p_len)
            return
        self.release(key)
        self.kept[key] = seq.slot
        self.slot_tokens[seq.slot] = (seq.ids + seq.gen)[:seq.cache_len]
        self.slot_prefix[seq.slot] = (seq.p_slot, seq.p_len)

    def release(self, cache_key: str) -> None:
        slot = self.kept.pop(cache_key, None)
        if slot is not None:
            self.slot_tokens[slot] = []
            self._drop_prefix(slot)

    def release_all(self) -> None:
        for k in list(self.kept):
            self.release(k)

    def _drop_live(self, i: int) -> None:
        s, self.live[i] = self.live[i], None  # its slot's cache is garbage now: nothing keeps it
        if s.p_slot >= 0:
            self._unread(s.p_slot, s.p_len)

    def cancel(self, request_id: str) -> bool:
        for s in self.queue:
            if s.req.id == request_id:
                self.queue.remove(s)
                return True
        for i, s in enumerate(self.live):
            if s is not None and s.req.id == request_id:
                self._drop_live(i)
                return True
        return False

    def abort(self) -> None:
        """Drop every queued and running sequence; kept caches stay."""
        self.queue.clear()
        for i, s in enumerate(self.live):
            if s is not None:
                self._drop_live(i)

    def clear(self) -> None:
        self.abort()
        self.release_all()
