"""The record of one solved (or failed) problem: what the runtime returns, what `apr run`
and `apr eval` append to their JSONL files, what evaluation summaries are computed from.

`Record.to_json()` is the on-disk form (one JSON object per line); `Record.from_json()`
reads it back, naming the file and line when a field is missing or of the wrong type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from apr.errors import UserError


@dataclass
class Record:
    index: int  # the problem's position in its problem file
    nums: list[int]
    target: int
    text: str  # the root thread's final text (children's results joined in)
    correct: bool  # the checker accepted the final path and the runtime did not stop the problem
    reason: str  # "correct", the checker's reason, or why the runtime stopped the problem
    answer: list[str]  # the operations of the final path the checker read ([] when none)
    total_tokens: int  # generated tokens over all threads
    sequential_tokens: int  # the root's tokens plus, at each join, its longest child chain
    longest_thread: int  # the largest context of any thread, in tokens
    children: int  # threads spawned
    latency_s: float  # first to last generated token
    method: str  # "apr" or "sos" as run; a solver row's name for solver records
    threads: dict | None = None  # the thread tree (`protocol.Thread.to_json()`; read back by `Thread.from_json`)
    sample: int | None = None  # sample number when a problem is sampled several times
    model: str | None = None  # the model folder or server that produced it
    runtime_method: str | None = None  # `apr eval`: the runtime method behind cons@N / pass@N
    rejected_claims: int | None = None  # `verified` joins: children's success claims that did not replay
    arithmetic: str | None = None  # "exact" when the engine wrote results (issue 20); unset: the model's own
    forced_tokens: int | None = None  # exact arithmetic: of total_tokens, those written for the model

    # Fields left out of the JSON form when unset.
    OPTIONAL = ("threads", "sample", "model", "runtime_method", "rejected_claims", "arithmetic", "forced_tokens")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if not (k in Record.OPTIONAL and v is None)}

    @classmethod
    def from_json(cls, d: dict, path: str | None = None, line: int | None = None) -> "Record":
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.name in cls.OPTIONAL:
                    continue
                raise UserError(f"not a run record (no `{f.name}`)", path, line)
            kwargs[f.name] = d[f.name]
        for name, kind in _TYPES.items():
            value = kwargs[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise UserError(f"record field `{name}` has the wrong type ({type(value).__name__})", path, line)
        return cls(**kwargs)

    def failed_as(self, reason: str) -> "Record":
        """This record as a failure that claims nothing (e.g. cut by a smaller window)."""
        return dataclasses.replace(self, correct=False, answer=[], text="", reason=reason)


# Checked types of the JSON form (a latency may be written 0 by hand).
_TYPES = {"index": int, "target": int, "text": str, "correct": bool, "reason": str, "nums": list, "answer": list,
          "total_tokens": int, "sequential_tokens": int, "longest_thread": int, "children": int,
          "latency_s": (int, float), "method": str}
