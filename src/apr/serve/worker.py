"""The engine thread (`EngineWorker`): it owns the engine and batches every request in flight
into the same decode steps; handler threads hand it requests and calls and wait on futures."""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from apr.engine.base import Completion, Engine, Request

log = logging.getLogger("apr.serve")

class EngineStepError(RuntimeError):
    """An engine step failed with this request in it, and it failed again alone."""


class ClientGone(RuntimeError):
    """The request was cancelled because its client went away."""


def _settle(fut: Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class EngineWorker:
    """Runs an engine on its own thread; other threads hand it requests and calls.

    When an engine step raises, every request in it is dropped from the engine and rerun
    alone, one at a time (new requests wait meanwhile): a request that fails alone gets the
    error, the others their normal completions (seeded sampling makes a rerun identical).
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: dict[str, tuple[Request, Future]] = {}  # in the engine
        self.held: deque[tuple[Request, Future]] = deque()  # arrived, not yet in the engine
        self.suspects: deque[tuple[Request, Future]] = deque()  # were in a failed step
        self.solo: str | None = None  # the suspect now running alone
        self.step_failures = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="apr-engine", daemon=True)
        self.thread.start()

    def submit(self, reqs: list[Request]) -> list[Future]:
        """Queue requests; each future gives its Completion (or raises EngineStepError)."""
        futs = []
        for r in reqs:
            f: Future = Future()
            self.inbox.put(("req", r, f))
            futs.append(f)
        return futs

    def generate(self, reqs: list[Request]) -> list[Completion]:
        return [f.result() for f in self.submit(reqs)]

    def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run fn(engine) on the engine thread once no request is running."""
        f: Future = Future()
        self.inbox.put(("call", fn, f))
        return f.result()

    def cancel(self, ids: list[str]) -> None:
        """Drop requests whose client went away (their futures raise ClientGone)."""
        self.inbox.put(("cancel", list(ids), None))

    def close(self) -> None:
        self._stop.set()
        self.inbox.put(("noop", None, None))
        self.thread.join(timeout=10)
        gone = RuntimeError("the server is shutting down")
        for _, f in list(self.waiting.values()) + list(self.held) + list(self.suspects):
            _settle(f, exc=gone)
        while True:
            try:
                kind, _, f = self.inbox.get_nowait()
            except queue.Empty:
                break
            if f is not None:
                _settle(f, exc=gone)
        self.engine.close()

    # ---- the loop ----------------------------------------------------------------
    def _loop(self) -> None:
        calls: list = []
        while not self._stop.is_set():
            # Block for work only when idle; while decoding, just drain what has arrived.
            idle = self.engine.pending() == 0 and not calls and not self.held and not self.suspects
            try:
                items = [self.inbox.get(timeout=0.5) if idle else self.inbox.get_nowait()]
            except queue.Empty:
                items = []
            while True:
                try:
                    items.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for kind, obj, fut in items:
                if kind == "call":
                    calls.append((obj, fut))
                elif kind == "req":
                    self.held.append((obj, fut))
                elif kind == "cancel":
                    self._cancel(obj)
            quiet = self.engine.pending() == 0
            if quiet and self.solo is None and self.suspects:
                req, fut = self.suspects.popleft()  # isolate: one suspect alone in the engine
                self.solo = req.id
                self._submit(req, fut)
            elif quiet and self.solo is None and calls:
                for fn, fut in calls:  # a weight swap runs between steps, with nothing running
                    try:
                        _settle(fut, fn(self.engine))
                    except Exception as e:  # hand any failure to the caller
                        _settle(fut, exc=e)
                calls = []
            if not calls and not self.suspects and self.solo is None:
                while self.held:
                    self._submit(*self.held.popleft())
            if self.engine.pending() > 0:
                self._step()

    def _step(self) -> None:
        try:
            done = self.engine.poll()
        except Exception as e:  # noqa: BLE001 - any engine failure is handed to its requests
            return self._step_failed(e)
        for c in done:
            if c.id == self.solo:
                self.solo = None
            entry = self.waiting.pop(c.id, None)
            if entry is not None:
                _settle(entry[1], c)

    def _step_failed(self, e: Exception) -> None:
        self.step_failures += 1
        victims = list(self.waiting.values())
        self.waiting.clear()
        try:
            self.engine.abort()
        except Exception:  # noqa: BLE001
            log.exception("engine abort failed after a failed step")
        msg = f"engine step failed: {type(e).__name__}: {e}"
        if self.solo is not None or len(victims) <= 1:
            self.solo = None
            log.warning("%s (request %s)", msg, ", ".join(r.id for r, _ in victims) or "-")
            for _, f in victims:
                _settle(f, exc=EngineStepError(msg))
        else:
            log.warning("%s with %d requests in it; rerunning them one at a time", msg, len(victims))
            self.suspects.extend(victims)

    def _submit(self, req: Request, fut: Future) -> None:
        if fut.done():  # cancelled while held
            if self.solo == req.id:
                self.solo = None
            return
        self.waiting[req.id] = (req, fut)
        try:
            self.engine.submit(req)
        except Exception as e:  # noqa: BLE001 - e.g. a prompt the tokenizer refuses
            self.waiting.pop(req.id, None)
            if self.solo == req.id:
                self.solo = None
            _settle(fut, exc=e)

    def _cancel(self, ids: list[str]) -> None:
        gone = ClientGone("the client went away")
        want = set(ids)
        for q in (self.held, self.suspects):
            for item in [it for it in q if it[0].id in want]:
                q.remove(item)
                _settle(item[1], exc=gone)
        for rid in ids:
            entry = self.waiting.get(rid)
            if entry is not None and self.engine.cancel(rid):
                self.waiting.pop(rid, None)
                if self.solo == rid:
                    self.solo = None
                _settle(entry[1], exc=gone)

