"""The spawn/join runtime: runs many problems' threads together on one engine.

A parent decodes until it ends a spawn block (`<End Calling Sub Searches>`); the runtime
parses the block, starts one child per requested node, and when all of them finished it
replaces the block with the join text and resumes the parent under the same cache key, so
a local engine prefills only the join text (an HTTP server's prefix cache does the same).
Every problem ends with a record: the root's text, the checker's verdict, the thread tree
and the metrics of the paper (total and sequential tokens, longest thread, children).

What a child passes on at a join is decided by `RuntimeConfig.join_rule` (JOIN_RULES):
`official` as the published evaluation (`protocol.thread_result`: the text after the
child's second-to-last `Goal Reached`, byte for byte), `goal-line` as the solvers write
demonstrations (`protocol.child_result`: a clean path ending in a well-formed goal line), or
`verified`: the official result, passed on only when it replays (`checker.replay`) from the
child's start state to its target; a false claim is joined as a failed sub search and
counted in `Record.rejected_claims`. docs/evaluation.md has the rules with examples.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from apr import protocol as P
from apr.arithmetic import MODES as ARITHMETIC_MODES
from apr.checker import check, replay
from apr.countdown import Problem
from apr.engine.base import Completion, Engine, EngineError, Request, SamplingParams
from apr.errors import UserError
from apr.model import ModelInfo
from apr.records import Record


@dataclass
class RuntimeConfig:
    method: str = "apr"  # "apr" (spawn/join) or "sos" (plain serial decoding)
    context: int = 4096  # tokens per thread (prompt + join text + generated); reaching it fails the problem
    max_children: int = 16  # per spawn block; more fails the problem
    max_depth: int = 1  # spawn levels allowed (children spawn again when > 1)
    max_total_tokens: int = 200_000  # generated tokens per problem over all threads
    sub_call_budget: int | None = None  # APR: `Sub Call Budget: N ` prefix
    token_budget: int | None = None  # SoS+: `Token Budget: N ` prefix
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_in_flight: int = 64  # problems decoding at once
    join_rule: str = "official"  # what a child passes on at a join: one of JOIN_RULES
    arithmetic: str = "model"  # issue 20: "exact" = the engine writes operands' limits and results (apr.arithmetic)

    def __post_init__(self) -> None:
        if self.method not in ("apr", "sos"):
            raise ValueError(f"method must be apr or sos, got {self.method!r}")
        if self.join_rule not in JOIN_RULES:
            raise UserError(f"--join-rule must be one of {', '.join(JOIN_RULES)}; got {self.join_rule!r}")
        if self.arithmetic not in ARITHMETIC_MODES:  # issue 20
            raise UserError(f"--arithmetic must be one of {', '.join(ARITHMETIC_MODES)}; got {self.arithmetic!r}")

    @classmethod
    def for_model(cls, info: ModelInfo, method: str | None = None, sub_call_budget: int | None = None,
                  token_budget: int | None = None, **settings) -> "RuntimeConfig":
        """The runtime settings for a model (`info`: its apr.json) plus overrides.

        `method` defaults to the model's. A budget prefix goes only to the method it belongs
        to: the value asked for, else the default when the model was trained with that prefix.
        Other keyword arguments are fields of this class; impossible values are UserErrors.
        """
        method = method or info.method
        if method == "apr" and sub_call_budget is None and info.sub_call_budget:
            sub_call_budget = default_child_budget(info)
        if method == "sos" and token_budget is None and info.token_budget:
            token_budget = DEFAULT_TOKEN_BUDGET
        cfg = cls(method=method, sub_call_budget=sub_call_budget if method == "apr" else None,
                  token_budget=token_budget if method == "sos" else None, **settings)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.context < 16:
            raise UserError(f"--context must be at least 16 tokens, got {self.context}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise UserError("sampling options: --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0")


@dataclass
class RuntimeOptions:
    """The runtime settings a user chooses (command-line options, a config); `config(info)`
    completes them from a model's apr.json into a RuntimeConfig. Defaults: the commands'."""

    method: str | None = None  # None: what the model was trained for
    context: int = 4096
    max_children: int = 16
    max_depth: int = 1
    max_total_tokens: int = 200_000
    sub_call_budget: int | None = None  # None: 10 when the model was trained with the prefix
    token_budget: int | None = None  # None: 4096 when the model was trained with the prefix
    temperature: float | None = None  # None: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_in_flight: int = 32
    join_rule: str = "official"  # official | goal-line | verified (JOIN_RULES)

    def config(self, info: ModelInfo, **changes) -> RuntimeConfig:
        o = dataclasses.replace(self, **changes)
        return RuntimeConfig.for_model(info, **{**dataclasses.asdict(o), "temperature": o.temperature or 0.0})


DEFAULT_SUB_CALL_BUDGET = 10  # the published evaluation's budget, for models that do not say theirs


def default_child_budget(info: ModelInfo) -> int:
    """The `Sub Call Budget` asked of an APR model trained with the prefix: the model's own
    (apr.json `child_budget`), else the published 10 capped by the task. Asking for more
    children than a problem has distinct first moves makes a model invent moves (a 3-number
    problem has 3 pairs; +, * and - are always legal on a pair, / rarely), so the cap is
    3 per pair of numbers: 9 for Countdown-3, 18 for Countdown-4."""
    if info.child_budget:
        return info.child_budget
    n = int(info.task.get("num_count", 4)) if isinstance(info.task, dict) else 4
    return min(DEFAULT_SUB_CALL_BUDGET, 3 * n * (n - 1) // 2)
DEFAULT_TOKEN_BUDGET = 4096  # tokens asked of an SoS+ model trained with `Token Budget` prefixes
# What a child passes on at a join (module docstring; docs/evaluation.md).
JOIN_RULES = ("official", "goal-line", "verified")
# Record reasons the runtime writes when it stops a problem (the rest are the checker's).
RUNTIME_FAILURES = ("context window reached", "total token limit reached", "malformed spawn block",
                    "too many children", "spawn names unknown node")


def join_result(text: str, prompt: str, rule: str) -> tuple[str | None, bool]:
    """What a child whose whole text is `text` (its prompt is `prompt`) passes on at a join
    under `rule`, and whether a success claim was rejected (`verified` only)."""
    if rule == "goal-line":
        return P.child_result(text), False
    path = P.thread_result(text)
    if path is not None and not path.endswith("\n"):
        path += "\n"  # `<End Sub Searches>` stays a line of its own
    if rule == "verified" and path is not None:
        start = P.start_state(prompt)
        if start is None or not replay(start.nums, start.target, path).correct:
            return None, True
    return path, False



@dataclass
class ThreadRun:
    """One thread while it runs, and its record afterwards."""

    id: str  # "0" for the root, "0.2" for its third child, ...
    level: int
    node: str
    prompt: str
    parent: "ThreadRun | None" = None
    context: str = ""  # everything the thread has seen and written so far
    tokens: int = 0  # generated by this thread
    inserted_tokens: int = 0  # join text prefilled into it
    prompt_tokens: int = 0
    context_tokens: int = 0  # its whole context at the last completion
    children: list[list["ThreadRun"]] = field(default_factory=list)
    spawn: list[P.ChildRequest] = field(default_factory=list)  # the block awaiting its join
    segments: list[str] = field(default_factory=list)  # generated text, one piece per completion
    joins: list[str] = field(default_factory=list)  # join text inserted after each spawn
    waiting: int = 0  # children still running
    start_step: int = -1
    end_step: int = -1
    status: str = "running"  # running, waiting, done, cut, failed
    forced_tokens: int = 0  # exact arithmetic: of `tokens`, those written for the model
    forced_spans: list[list[tuple[int, int]]] | None = None  # exact arithmetic: per segment, their char spans in it

    def sequential_tokens(self) -> int:
        """This thread's tokens plus, at each join, the longest child chain."""
        return self.tokens + sum(max((c.sequential_tokens() for c in g), default=0) for g in self.children)

    def walk(self) -> Iterator["ThreadRun"]:
        yield self
        for g in self.children:
            for c in g:
                yield from c.walk()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "level": self.level,
            "node": self.node,
            "prompt": self.prompt,
            "text": self.context,
            "tokens": self.tokens,
            "context_tokens": self.context_tokens,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "status": self.status,
            "segments": self.segments,
            "joins": self.joins,
            "children": [[c.to_dict() for c in g] for g in self.children],
            # issue 20: only under exact arithmetic, so default records stay byte-identical
            **({"forced_tokens": self.forced_tokens, "forced_spans": self.forced_spans}
               if self.forced_spans is not None else {}),
        }


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
        text = P.apr_prompt(problem.target, problem.nums, cfg.sub_call_budget)
    else:
        text = P.sos_prompt(problem.target, problem.nums, cfg.token_budget)
    return text[:-1]


class Runtime:
    """Drives an engine over a stream of problems; yields one record per finished problem."""

    def __init__(self, engine: Engine, cfg: RuntimeConfig, tokenizer=None):
        self.engine, self.cfg = engine, cfg
        self.tok = tokenizer if tokenizer is not None else engine.tokenizer
        if self.tok is None:
            raise ValueError("the runtime needs a tokenizer to count tokens")
        if cfg.arithmetic not in getattr(engine, "arithmetic_modes", ("model",)):  # issue 20
            raise UserError(f"--arithmetic {cfg.arithmetic} needs an engine that supports it (the local engine)")
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
        root = ThreadRun("0", 0, "0", prompt, context=prompt)
        run = ProblemRun(index, problem, root, self.cfg.seed)
        self._submit(run, root)
        return run

    def _submit(self, run: ProblemRun, th: ThreadRun) -> None:
        n_ctx = len(self.tok.encode(th.context, add_special_tokens=False))
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
        if self.cfg.arithmetic != "model" and th.forced_spans is None:  # issue 20
            th.forced_spans = []
        self.engine.submit(Request(rid, th.context, budget, [P.SPAWN_END] if spawning else [], sampling,
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
        th.context += c.text
        th.segments.append(c.text)
        th.tokens += c.n_tokens
        if th.forced_spans is not None:  # issue 20
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
        if c.finish_reason == "stop" and th.context.rstrip("\n").endswith(P.SPAWN_END):
            return self._spawn(run, th)
        th.status, th.end_step = "done", self.step
        self._release(run, th)
        if th.parent is not None:
            self._child_done(run, th.parent)

    def _spawn(self, run: ProblemRun, th: ThreadRun) -> None:
        requests = P.parse_spawn(th.context)
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
            group.append(ThreadRun(cid, r.level, r.node, prompt, parent=th, context=prompt))
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
        for r, c in zip(parent.spawn, group):
            path, rejected = join_result(c.context, c.prompt, self.cfg.join_rule)
            run.rejected_claims += rejected
            results.append(P.ChildResult(r.index, r.level, r.node, path))
        join = P.join_text(results)
        parent.joins.append(join)
        parent.inserted_tokens += len(self.tok.encode(join, add_special_tokens=False))
        parent.context = parent.context[: P.spawn_start(parent.context)] + join
        self._submit(run, parent)

    def _release(self, run: ProblemRun, th: ThreadRun) -> None:
        self.engine.release(f"{run.index}/{th.id}")

    # -------------------------------------------------------------- records

    def _record(self, run: ProblemRun) -> Record:
        for th in run.root.walk():  # free caches of threads a failure left paused
            if th.status == "waiting":
                th.status = "failed"
                self._release(run, th)
        text = run.root.context
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
            threads=run.root.to_dict(),
            rejected_claims=run.rejected_claims if self.cfg.join_rule == "verified" else None,
            arithmetic=None if self.cfg.arithmetic == "model" else self.cfg.arithmetic,  # issue 20
            forced_tokens=None if self.cfg.arithmetic == "model" else sum(t.forced_tokens for t in threads),
        )


def thread_from_tree(t: dict) -> P.Thread:
    """A record's thread tree (`Record.threads`) as a protocol thread, for training on
    rollouts: segments, joins and children as the runtime produced them."""
    return P.Thread(
        t["prompt"],
        list(t["segments"]),
        [[thread_from_tree(c) for c in g] for g in t["children"]],
        list(t["joins"]),
    )


def solve_problems(engine: Engine, problems: list[Problem], cfg: RuntimeConfig) -> list[Record]:
    """Convenience: records in input order."""
    recs = Runtime(engine, cfg).run(enumerate(problems))
    return sorted(recs, key=lambda r: r.index)
