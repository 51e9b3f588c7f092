"""The spawn/join runtime: runs many problems' threads together on one engine.

A parent decodes until it ends a spawn block (`<End Calling Sub Searches>`); the runtime
parses the block, starts one child per requested node, and when all of them finished it
replaces the block with the join text and resumes the parent under the same cache key, so
a local engine prefills only the join text (an HTTP server's prefix cache does the same).
Every problem ends with a record: the root's text, the checker's verdict, the thread tree
and the metrics of the paper (total and sequential tokens, longest thread, children).

The settings are a `RuntimeConfig` (apr.runtime_config), resolved for the model before a run.
What a child passes on at a join is decided by `RuntimeConfig.join_rule`, one of the rules
of `apr.protocol.joins.JOIN_RULES`: `official` as the published evaluation, `goal-line` as
the solvers write demonstrations, or `verified` (the official result when it replays); a
claim `verified` refuses is counted in `Record.rejected_claims`. docs/evaluation.md has the
rules with examples.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from apr import protocol as P
from apr.checker import check
from apr.countdown import Problem
from apr.engine.base import Completion, Engine, EngineError, Request, SamplingParams
from apr.protocol.joins import JOIN_RULES
from apr.records import Record
from apr.runtime_config import RuntimeConfig

# Record reasons the runtime writes when it stops a problem (the rest are the checker's).
RUNTIME_FAILURES = ("context window reached", "total token limit reached", "malformed spawn block",
                    "too many children", "spawn names unknown node")


@dataclass
class ThreadRun(P.Thread):
    """A thread while the runtime runs it: a protocol thread (whose fields the record keeps)
    plus what only a running thread has."""

    status: str = "running"  # running, waiting, done, cut, failed, cancelled
    parent: "ThreadRun | None" = field(default=None, repr=False, compare=False)
    spawn: list[P.ChildRequest] = field(default_factory=list)  # the block awaiting its join
    waiting: int = 0  # children still running
    inserted_tokens: int = 0  # join text prefilled into it
    prompt_tokens: int = 0


@dataclass
class ProblemRun:
    index: int
    problem: Problem
    root: ThreadRun
    seed: int
    total_tokens: int = 0
    first_token: float | None = None
    last_token: float | None = None
    failure: str | None = None  # why the problem was stopped early
    rejected_claims: int = 0  # `verified` joins: children's success claims that did not replay
    running: int = 0  # threads with a request in the engine


def thread_seed(seed: int, index: int, thread_id: str) -> int:
    """Per-thread sampling seed: a function of the problem, never of batch makeup."""
    return zlib.crc32(f"{seed}/{index}/{thread_id}".encode()) & 0x7FFFFFFF


def root_prompt(problem: Problem, cfg: RuntimeConfig) -> str:
    """The published evaluation gives the first lines without their final newline."""
    if cfg.method == "apr":
        text = P.apr_prompt(problem.target, problem.nums, cfg.child_budget)
    else:
        text = P.sos_prompt(problem.target, problem.nums, cfg.token_budget)
    return text[:-1]


class Runtime:
    """Drives an engine over a stream of problems; yields one record per finished problem."""

    def __init__(self, engine: Engine, cfg: RuntimeConfig, tokenizer=None):
        cfg.require_resolved()
        self.engine, self.cfg = engine, cfg
        self.tok = tokenizer if tokenizer is not None else engine.tokenizer
        if self.tok is None:
            raise ValueError("the runtime needs a tokenizer to count tokens")
        engine.check_arithmetic(cfg.arithmetic)
        self.step = 0
        self.engine_seconds = 0.0  # time spent inside engine.poll (the rest is orchestration)
        self._requests: dict[str, tuple[ProblemRun, ThreadRun]] = {}
        self._counter = 0

    # -------------------------------------------------------------- public

    def run(self, problems: Iterable[tuple[int, Problem]], on_record: Callable[[Record], None] | None = None) -> list[Record]:
        """Solve (index, problem) pairs; records come back in completion order."""
        out = []
        for rec in self.iter_run(problems):
            out.append(rec)
            if on_record:
                on_record(rec)
        return out

    def iter_run(self, problems: Iterable[tuple[int, Problem]]) -> Iterator[Record]:
        todo = iter(problems)
        live: dict[int, ProblemRun] = {}
        exhausted = False
        while True:
            while not exhausted and len(live) < self.cfg.max_in_flight:
                nxt = next(todo, None)
                if nxt is None:
                    exhausted = True
                    break
                index, problem = nxt
                run = self._start(index, problem)
                live[id(run)] = run
            if not live:
                return
            t = time.perf_counter()
            completions = self.engine.poll()
            self.engine_seconds += time.perf_counter() - t
            for c in completions:
                self._on_completion(c)
            self.step += 1
            for key in [k for k, r in live.items() if r.running == 0]:
                run = live.pop(key)
                yield self._record(run)

    # -------------------------------------------------------------- threads

    def _start(self, index: int, problem: Problem) -> ProblemRun:
        prompt = root_prompt(problem, self.cfg)
        root = ThreadRun(prompt, id="0", level=0, node="0")
        run = ProblemRun(index, problem, root, self.cfg.seed)
        self._submit(run, root)
        return run

    def _submit(self, run: ProblemRun, th: ThreadRun) -> None:
        context = th.text()
        n_ctx = len(self.tok.encode(context, add_special_tokens=False))
        if th.start_step < 0:
            th.start_step, th.prompt_tokens = self.step, n_ctx
        th.context_tokens = n_ctx
        budget = min(self.cfg.context - n_ctx, self.cfg.max_total_tokens - run.total_tokens)
        if budget <= 0:
            return self._fail(run, th, "cut", "context window reached" if self.cfg.context <= n_ctx else "total token limit reached")
        spawning = self.cfg.method == "apr" and th.level < self.cfg.max_depth
        self._counter += 1
        rid = f"{run.index}/{th.id}/{self._counter}"
        sampling = SamplingParams(self.cfg.temperature, self.cfg.top_k, self.cfg.top_p, thread_seed(run.seed, run.index, th.id))
        if self.cfg.arithmetic != "model" and th.forced_spans is None:  # exact arithmetic
            th.forced_spans = []
        self.engine.submit(Request(rid, context, budget, [P.SPAWN_END] if spawning else [], sampling,
                                   cache_key=f"{run.index}/{th.id}", arithmetic=self.cfg.arithmetic))
        self._requests[rid] = (run, th)
        th.status = "running"
        run.running += 1

    def _fail(self, run: ProblemRun, th: ThreadRun, status: str, reason: str) -> None:
        th.status, th.end_step = status, self.step
        if run.failure is None:
            run.failure = reason
            self._cancel_rest(run)

    def _cancel_rest(self, run: ProblemRun) -> None:
        """A failed problem's answer is decided: stop its other threads instead of letting
        them decode to the end (engines that cannot cancel let them drain). A cancelled
        thread keeps what it had finished; its tokens in flight are not counted."""
        for rid, (r, th) in list(self._requests.items()):
            if r is run and self.engine.cancel(rid):
                del self._requests[rid]
                run.running -= 1
                th.status, th.end_step = "cancelled", self.step
                self._release(run, th)

    def _on_completion(self, c: Completion) -> None:
        run, th = self._requests.pop(c.id)
        run.running -= 1
        th.segments.append(c.text)
        th.tokens += c.n_tokens
        if th.forced_spans is not None:
            th.forced_tokens += c.forced_tokens
            th.forced_spans.append(list(c.forced_spans))
        th.context_tokens = c.prompt_tokens + c.n_tokens if c.prompt_tokens else th.context_tokens + c.n_tokens
        run.total_tokens += c.n_tokens
        if c.n_tokens:
            run.first_token = min(run.first_token or c.first_token_time, c.first_token_time)
            run.last_token = max(run.last_token or c.end_time, c.end_time)
        if run.failure is not None:  # the problem already failed: let its threads drain
            th.status, th.end_step = "failed", self.step
            return self._release(run, th)
        if c.finish_reason == "error":
            raise EngineError(c.error or "engine error")
        if c.finish_reason == "length":
            limit = "total token limit reached" if run.total_tokens >= self.cfg.max_total_tokens else "context window reached"
            self._fail(run, th, "cut", limit)
            return self._release(run, th)
        if c.finish_reason == "stop" and th.text().rstrip("\n").endswith(P.SPAWN_END):
            return self._spawn(run, th)
        th.status, th.end_step = "done", self.step
        self._release(run, th)
        if th.parent is not None:
            self._child_done(run, th.parent)

    def _spawn(self, run: ProblemRun, th: ThreadRun) -> None:
        requests = P.parse_spawn(th.text())
        if not requests:
            self._fail(run, th, "failed", "malformed spawn block")
            return self._release(run, th)
        if len(requests) > self.cfg.max_children:
            self._fail(run, th, "failed", f"too many children ({len(requests)} > {self.cfg.max_children})")
            return self._release(run, th)
        unknown = [r.node for r in requests if r.prompt is None]
        if unknown:
            self._fail(run, th, "failed", f"spawn names unknown node #{unknown[0]}")
            return self._release(run, th)
        group = []
        for r in requests:
            prompt = r.prompt[:-1]  # like the root, without the final newline
            cid = f"{th.id}.{sum(len(g) for g in th.children) + len(group)}"
            group.append(ThreadRun(prompt, id=cid, level=r.level, node=r.node, parent=th))
        th.children.append(group)
        th.status, th.waiting = "waiting", len(group)
        th.spawn = requests
        for child in group:
            self._submit(run, child)

    def _child_done(self, run: ProblemRun, parent: ThreadRun) -> None:
        parent.waiting -= 1
        if parent.waiting > 0 or run.failure is not None:
            return
        group = parent.children[-1]
        results = []
        rule = JOIN_RULES[self.cfg.join_rule]
        for r, c in zip(parent.spawn, group):
            passed = rule(c)
            run.rejected_claims += passed.rejected
            results.append(P.ChildResult(r.index, r.level, r.node, passed.path))
        join = P.join_text(results)
        parent.joins.append(join)  # the parent's text now has the join in place of its spawn block
        parent.inserted_tokens += len(self.tok.encode(join, add_special_tokens=False))
        self._submit(run, parent)

    def _release(self, run: ProblemRun, th: ThreadRun) -> None:
        self.engine.release(f"{run.index}/{th.id}")

    # -------------------------------------------------------------- records

    def _record(self, run: ProblemRun) -> Record:
        for th in run.root.walk():  # free caches of threads a failure left paused
            if th.status == "waiting":
                th.status = "failed"
                self._release(run, th)
        text = run.root.text()
        verdict = check(run.problem.nums, run.problem.target, text)
        threads = list(run.root.walk())
        return Record(
            index=run.index,
            nums=run.problem.nums,
            target=run.problem.target,
            text=text,
            correct=verdict.correct and run.failure is None,
            reason=run.failure or verdict.reason,
            answer=list(verdict.path),
            total_tokens=run.total_tokens,
            sequential_tokens=run.root.sequential_tokens(),
            longest_thread=max(t.context_tokens for t in threads),
            children=len(threads) - 1,
            latency_s=(run.last_token - run.first_token) if run.first_token is not None else 0.0,
            method=self.cfg.method,
            threads=run.root.to_json(),
            rejected_claims=run.rejected_claims if self.cfg.join_rule == "verified" else None,
            arithmetic=None if self.cfg.arithmetic == "model" else self.cfg.arithmetic,
            forced_tokens=None if self.cfg.arithmetic == "model" else sum(t.forced_tokens for t in threads),
        )


def solve_problems(engine: Engine, problems: list[Problem], cfg: RuntimeConfig) -> list[Record]:
    """Convenience: records in input order."""
    recs = Runtime(engine, cfg).run(enumerate(problems))
    return sorted(recs, key=lambda r: r.index)
