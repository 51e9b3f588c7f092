"""The inference-engine interface the spawn/join runtime is written against.

An engine takes `Request`s (`submit`), makes progress when polled (`poll` returns the
`Completion`s that finished), and can keep a request's KV cache under a `cache_key` so a
later request that extends the same context only prefills the new suffix.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apr.errors import UserError


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int = 0  # per-request seed: results must not depend on batch makeup or slot


@dataclass
class Request:
    id: str  # unique per call
    prompt: str  # the whole context as text
    max_tokens: int  # new tokens allowed
    stop: list[str] = field(default_factory=list)  # a completion stopped by one INCLUDES it in .text
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Keep this KV cache after completion; a later request with the same key reuses the
    # longest common token prefix (only the rest is prefilled).
    cache_key: str | None = None
    # A kept cache (another request's cache_key, e.g. the parent's) whose longest common token
    # prefix with this prompt is read in place, not prefilled (engines may ignore it).
    prefix_key: str | None = None
    # `exact`: exact arithmetic in `Exploring Operation:` lines (apr.arithmetic), on engines
    # whose `arithmetic_modes` have it; `model` (default): every token is the model's.
    arithmetic: str = "model"


@dataclass
class Completion:
    id: str
    text: str  # generated text (stop string included when finish_reason == "stop"; EOS text never)
    token_ids: list[int]  # generated ids (may be empty for the HTTP client)
    n_tokens: int  # generated tokens
    finish_reason: str  # "stop" (stop string), "eos", "length", "error"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the cache (0 without reuse)
    first_token_time: float  # time.perf_counter() of the first generated token
    end_time: float
    error: str | None = None
    forced_tokens: int = 0  # exact arithmetic: generated tokens written for the model (in n_tokens)
    forced_spans: list[tuple[int, int]] = field(default_factory=list)  # their character spans in text


class EngineError(RuntimeError):
    """The engine failed (e.g. a server died): stop the run, keep finished records."""


class WeightsRefused(UserError):
    """New weights that do not fit the served model (another architecture, tokenizer, a
    missing or non-finite weight): nothing was changed, the old weights serve on."""


class SwapFailed(EngineError):
    """Copying checked weights in failed half way; the old weights were put back."""


@dataclass(frozen=True)
class StagedWeights:
    """New weights read and checked (`Engine.stage_weights`), waiting for `swap_weights`."""

    folder: Path
    state_dict: Any = None  # None: the engine reads the folder when it swaps (e.g. a server's)


class Engine(ABC):
    tokenizer = None  # a Hugging Face tokenizer (None for an HTTP engine without one)
    max_len: int | None = None  # tokens one sequence may hold, prompt + generated (None: not known here)
    vocab_size: int | None = None  # the model's vocabulary size (None: not known here)
    arithmetic_modes: tuple[str, ...] = ("model",)  # the `Request.arithmetic` values it honours

    def check_arithmetic(self, mode: str) -> None:
        """UserError unless requests with `arithmetic=mode` are honoured (asked once, before a
        run: an engine that ignored the mode would mislabel every result)."""
        if mode not in self.arithmetic_modes:
            raise UserError(f"`arithmetic` {mode} needs an engine that supports it (the local engine, apr serve)",
                            fields=("arithmetic",))

    @abstractmethod
    def submit(self, req: Request) -> None:
        """Queue a request; it runs as soon as there is room."""

    @abstractmethod
    def poll(self) -> list[Completion]:
        """Make progress and return the requests that finished since the last poll."""

    @abstractmethod
    def release(self, cache_key: str) -> None:
        """Free a kept KV cache (no-op for an unknown key)."""

    @abstractmethod
    def free_slots(self) -> int:
        """How many more requests could start now without queuing."""

    @abstractmethod
    def pending(self) -> int:
        """Requests submitted and not yet returned by poll."""

    def cancel(self, request_id: str) -> bool:
        """Drop a queued or running request; True when dropped (its completion will never
        come), False when the engine cannot cancel it or it already finished (its completion
        still comes). Engines without cancellation keep this default."""
        return False

    @abstractmethod
    def abort(self) -> None:
        """Drop every queued and running request (after a failed step): none of their
        completions will come. Kept caches may stay."""

    # ---- new weights: one checked path, in two halves so a server can keep serving ---------
    def stage_weights(self, folder: str | Path) -> StagedWeights:
        """Read and check new weights of the same architecture from a Hugging Face folder
        (WeightsRefused if they do not fit). Leaves the engine as it is, so it may run on
        another thread while this one serves. Default: nothing to read here, the swap does."""
        return StagedWeights(Path(folder))

    def swap_weights(self, staged: StagedWeights) -> None:
        """Put staged weights in, with no request running (one thread drives the engine); kept
        caches are dropped (their K/V came from the old weights). All or nothing: if the copy
        fails (SwapFailed) the old weights serve on."""
        raise EngineError("this engine cannot reload weights")

    def reload_weights(self, folder: str | Path) -> None:
        """Stage, then swap: new weights from a folder, checked, with no request running."""
        self.swap_weights(self.stage_weights(folder))

    @abstractmethod
    def close(self) -> None:
        """Free resources; the engine is unusable afterwards."""

    def run(self, reqs: list[Request]) -> list[Completion]:
        """Convenience: submit all, poll until done, return completions in request order."""
        for r in reqs:
            self.submit(r)
        want = {r.id for r in reqs}
        done: dict[str, Completion] = {}
        while want - done.keys():
            for c in self.poll():
                done[c.id] = c
        return [done[r.id] for r in reqs]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_match(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Earliest-ending occurrence of any stop string in text: (end index, stop string)."""
    best: tuple[int, str] | None = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), s)
    return best


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token-id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
