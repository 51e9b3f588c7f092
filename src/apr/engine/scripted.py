"""A scripted engine that replays known continuations token by token.

It stands in for a model in tests and benchmarks of the runtime: given solver thread trees,
each context the runtime sends gets the solver's own next segment, one token per `poll`,
through the same tokenizer a model would use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from apr import protocol as P
from apr.engine.base import Completion, Engine, Request, common_prefix_len, stop_match


def script_from_thread(thread: P.Thread, script: dict[str, str] | None = None) -> dict[str, str]:
    """Map every context the runtime will send for this tree to the solver's continuation.

    The runtime sends prompts without their final newline, so a first segment's
    continuation starts with that newline.
    """
    script = {} if script is None else script
    for t in thread.walk():
        for i, (context, seg) in enumerate(zip(t.contexts(), t.segments)):
            if i == 0:
                script[context[:-1]] = "\n" + seg
            else:
                script[context] = seg
    return script


@dataclass
class _Live:
    req: Request
    ids: list[int]
    prompt_ids: list[int]
    prompt_tokens: int
    cached: int
    pos: int = 0
    text: str = ""
    first: float = 0.0


class ScriptedEngine(Engine):
    def __init__(self, tokenizer, script: dict[str, str], max_slots: int = 64, cancellable: bool = True):
        self.tokenizer, self.script, self.max_slots = tokenizer, script, max_slots
        self.cancellable = cancellable  # False: behave like an engine without cancellation
        self.cancelled: list[str] = []  # request ids dropped by cancel()
        self.queue: list[Request] = []
        self.live: list[_Live] = []
        self.kept: dict[str, list[int]] = {}  # cache_key -> the token ids its cache holds
        self.prefilled = 0  # prompt tokens the engine had to compute (not reused)
        self.log: list[tuple[str, int, int]] = []  # (request id, prompt tokens, reused tokens)

    def submit(self, req: Request) -> None:
        self.queue.append(req)

    def _admit(self) -> None:
        while self.queue and len(self.live) < self.max_slots:
            req = self.queue.pop(0)
            prompt_ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
            n_prompt = len(prompt_ids)
            reused = common_prefix_len(self.kept.pop(req.cache_key, []), prompt_ids) if req.cache_key else 0
            self.prefilled += n_prompt - reused
            self.log.append((req.id, n_prompt, reused))
            text = self.script.get(req.prompt, "")
            ids = self.tokenizer.encode(text, add_special_tokens=False) if text else []
            self.live.append(_Live(req, ids, prompt_ids, n_prompt, reused))

    def poll(self) -> list[Completion]:
        self._admit()
        now = time.perf_counter()
        done, still = [], []
        for s in self.live:
            if s.pos == 0:
                s.first = now
            finish = None
            if s.pos >= len(s.ids):
                finish = "eos"
            else:
                s.text += self.tokenizer.decode(s.ids[s.pos : s.pos + 1])  # test-grade detokenization
                s.pos += 1
                m = stop_match(s.text[-64:], s.req.stop)
                if m:
                    finish = "stop"
                elif s.pos >= s.req.max_tokens:
                    finish = "length"
            if finish is None:
                still.append(s)
                continue
            text = s.text
            if finish == "stop":
                text = text[: stop_match(text, s.req.stop)[0]]
            if s.req.cache_key:
                self.kept[s.req.cache_key] = s.prompt_ids + s.ids[: s.pos]
            done.append(Completion(s.req.id, text, s.ids[: s.pos], s.pos, finish, s.prompt_tokens, s.cached, s.first, now))
        self.live = still
        return done

    def release(self, cache_key: str) -> None:
        self.kept.pop(cache_key, None)

    def cancel(self, request_id: str) -> bool:
        if not self.cancellable:
            return False
        n = len(self.queue) + len(self.live)
        self.queue = [r for r in self.queue if r.id != request_id]
        self.live = [s for s in self.live if s.req.id != request_id]
        if len(self.queue) + len(self.live) < n:
            self.cancelled.append(request_id)
            return True
        return False

    def abort(self) -> None:
        self.queue.clear()
        self.live.clear()

    def free_slots(self) -> int:
        return self.max_slots - len(self.live)

    def pending(self) -> int:
        return len(self.queue) + len(self.live)

    def close(self) -> None:
        self.queue.clear()
        self.live.clear()
