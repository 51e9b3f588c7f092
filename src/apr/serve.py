"""An OpenAI-compatible completions server over an engine (`apr serve` runs it).

HTTP handler threads (ThreadingHTTPServer) only parse JSON and wait; one engine thread owns
the `LocalEngine` and batches every concurrent request into the same decode steps.

Endpoints: GET /health, GET /v1/models, POST /v1/completions (vLLM-shaped: the stop string
is stripped from `text` and reported in `stop_reason`, null for EOS), POST
/update_weights_from_disk (SGLang-shaped: {"model_path": ...} -> {"success", "message"}).
Extensions to the completions body: `top_k`, `seed`, `include_stop_str_in_output` (as in
vLLM) and `cache_key` (keep/reuse the request's KV cache, see `apr.engine.base.Request`).
"""

from __future__ import annotations

import itertools
import json
import queue
import random
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from apr.engine.base import Completion, Engine, Request, SamplingParams
from apr.errors import UserError


class EngineWorker:
    """Runs an engine on its own thread; other threads hand it requests and calls."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()
        self.waiting: dict[str, Future] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="apr-engine", daemon=True)
        self.thread.start()

    def generate(self, reqs: list[Request]) -> list[Completion]:
        futs = []
        for r in reqs:
            f: Future = Future()
            self.inbox.put(("req", r, f))
            futs.append(f)
        return [f.result() for f in futs]

    def call(self, fn: Callable[[Engine], Any]) -> Any:
        """Run fn(engine) on the engine thread once no request is running."""
        f: Future = Future()
        self.inbox.put(("call", fn, f))
        return f.result()

    def close(self) -> None:
        self._stop.set()
        self.inbox.put(("noop", None, None))
        self.thread.join(timeout=10)
        self.engine.close()

    def _loop(self) -> None:
        held: list = []  # requests that arrived behind a pending call
        calls: list = []
        while not self._stop.is_set():
            # Block for work only when idle; while decoding, just drain what has arrived.
            idle = self.engine.pending() == 0 and not calls
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
                    if calls:  # a weight reload waits for the running requests; hold new ones
                        held.append((kind, obj, fut))
                    else:
                        self._submit((kind, obj, fut))
            if calls and self.engine.pending() == 0:
                for fn, fut in calls:
                    try:
                        fut.set_result(fn(self.engine))
                    except Exception as e:  # hand any failure to the caller
                        fut.set_exception(e)
                calls = []
                for item in held:
                    self._submit(item)
                held = []
            if self.engine.pending() > 0:
                try:
                    done = self.engine.poll()
                except Exception as e:  # fail every waiting request rather than hang
                    for f in self.waiting.values():
                        f.set_exception(e)
                    self.waiting.clear()
                    self.engine.abort()
                    continue
                for c in done:
                    f = self.waiting.pop(c.id, None)
                    if f is not None:
                        f.set_result(c)

    def _submit(self, item) -> None:
        _, req, fut = item
        self.waiting[req.id] = fut
        try:
            self.engine.submit(req)
        except Exception as e:
            self.waiting.pop(req.id, None)
            fut.set_exception(e)


class BadRequest(Exception):
    pass


def _completion_requests(body: dict, ids: itertools.count) -> tuple[list[Request], bool]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be a string or a non-empty list of strings")
    if body.get("n", 1) != 1 or body.get("best_of", 1) not in (1, None):
        raise BadRequest("only n=1 is supported")
    if body.get("stream"):
        raise BadRequest("streaming is not supported")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings")
    try:
        max_tokens = int(body.get("max_tokens") if body.get("max_tokens") is not None else 16)
        temperature = float(body.get("temperature") if body.get("temperature") is not None else 1.0)
        top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
        top_k = int(body.get("top_k") or 0)
        seed = body.get("seed")
        seed = random.getrandbits(32) if seed is None else int(seed)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"bad sampling parameter: {e}") from None
    if max_tokens < 0 or temperature < 0 or not 0 < top_p <= 1:
        raise BadRequest("max_tokens and temperature must be >= 0, top_p in (0, 1]")
    key = body.get("cache_key")
    reqs = []
    for i, p in enumerate(prompts):
        sp = SamplingParams(temperature=temperature, top_k=max(top_k, 0), top_p=top_p, seed=seed + i)
        reqs.append(Request(f"cmpl-{next(ids)}", p, max_tokens, list(stop), sp,
                            cache_key=None if key is None else f"{key}#{i}" if len(prompts) > 1 else key))
    return reqs, bool(body.get("include_stop_str_in_output"))


def _choice(i: int, c: Completion, stops: list[str], keep_stop: bool) -> dict:
    text, matched = c.text, None
    if c.finish_reason == "stop":
        matched = max((s for s in stops if s and text.endswith(s)), key=len, default=None)
        if matched is not None and not keep_stop:
            text = text[: len(text) - len(matched)]
    finish = "length" if c.finish_reason == "length" else "stop"
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": matched}


def make_handler(worker: EngineWorker, model_name: str, max_len: int):
    ids = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for the client's connection pool

        def log_message(self, format, *args):  # quiet: one line per request is noise at 64-way load
            pass

        def _send(self, code: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error", "code": code}})

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                self._send(200, {"status": "ok"})
            elif path == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": model_name, "object": "model", "owned_by": "apr", "max_model_len": max_len}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            path = self.path.split("?")[0].rstrip("/")
            try:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
            except ValueError as e:
                return self._error(400, f"bad JSON: {e}")
            if path == "/v1/completions":
                return self._completions(body)
            if path == "/update_weights_from_disk":
                return self._reload(body)
            self._error(404, f"no route {self.path}")

        def _completions(self, body: dict) -> None:
            try:
                reqs, keep_stop = _completion_requests(body, ids)
            except BadRequest as e:
                return self._error(400, str(e))
            try:
                comps = worker.generate(reqs)
            except Exception as e:
                return self._error(500, f"engine failure: {e}")
            bad = [c for c in comps if c.finish_reason == "error"]
            if bad:
                return self._error(400, bad[0].error or "request failed")
            usage = {"prompt_tokens": sum(c.prompt_tokens for c in comps),
                     "completion_tokens": sum(c.n_tokens for c in comps)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            usage["prompt_tokens_details"] = {"cached_tokens": sum(c.cached_tokens for c in comps)}
            self._send(200, {
                "id": reqs[0].id, "object": "text_completion", "created": int(time.time()),
                "model": model_name,
                "choices": [_choice(i, c, r.stop, keep_stop) for i, (r, c) in enumerate(zip(reqs, comps))],
                "usage": usage})

        def _reload(self, body: dict) -> None:
            path = body.get("model_path")
            if not isinstance(path, str) or not path:
                return self._send(400, {"success": False, "message": "'model_path' is required"})
            try:
                worker.call(lambda eng: eng.reload_weights(path))
            except Exception as e:
                return self._send(400, {"success": False, "message": f"cannot load weights from {path}: {e}"})
            self._send(200, {"success": True, "message": f"loaded weights from {path}"})

    return Handler


def start_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, model_name: str = "apr",
                 max_len: int = 4096) -> tuple[ThreadingHTTPServer, EngineWorker]:
    """Bind the server (port 0 picks a free one) and start its engine thread.

    The caller runs `httpd.serve_forever()` (possibly in a thread); stop it with
    `httpd.shutdown(); httpd.server_close(); worker.close()`.
    """
    worker = EngineWorker(engine)
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(worker, model_name, max_len))
    except OSError as e:
        worker.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    httpd.daemon_threads = True
    return httpd, worker
