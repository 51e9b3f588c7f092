"""The HTTP layer: `Handler` answers each connection on a thread of its own (authenticate,
route, read and check the body, wait for the engine thread), `Server` listens, and
`start_server` binds it over an engine."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import time
from concurrent.futures import Future, as_completed
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apr.engine.base import Completion, Engine
from apr.errors import UserError, first_line
from apr.serve.app import App, ReloadError
from apr.serve.config import ServeConfig
from apr.serve.requests import CompletionJob, HTTPError, choice, parse_completion, parse_json, usage
from apr.serve.worker import EngineStepError, EngineWorker

log = logging.getLogger("apr.serve")
access_log = logging.getLogger("apr.serve.access")


class Handler(BaseHTTPRequestHandler):
    """One connection's requests (keep-alive), on a thread of its own: authenticate, route,
    read and check the body, then wait for the engine thread's answer."""

    protocol_version = "HTTP/1.1"  # keep-alive for the client's connection pool
    server_version = "apr-serve"
    sys_version = ""
    server: "Server"

    def setup(self):
        self.app = self.server.app
        self.cfg = self.app.cfg
        self.timeout = self.cfg.idle_timeout  # StreamRequestHandler.setup applies it to the socket
        super().setup()

    # ---- logging: one access line per request, nothing else on stderr -------------
    def log_message(self, format, *args):
        pass

    def log_request(self, code="-", size="-"):
        self._status = code

    def parse_request(self):
        self._t0 = time.perf_counter()
        return super().parse_request()

    def handle_one_request(self):
        self._t0, self._status = None, None
        try:
            super().handle_one_request()
        finally:
            if self._t0 is not None and self.cfg.access_log:
                path = (self.path or "-").split("?")[0][:200]
                status = int(self._status) if isinstance(self._status, int) else self._status or "-"
                access_log.info('%s:%s "%s %s" %s %.1fms', self.client_address[0], self.client_address[1],
                                self.command or "-", path, status, 1000 * (time.perf_counter() - self._t0))

    # ---- responses ---------------------------------------------------------------
    def _send(self, code: int, obj: Any, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, msg: str, param: str | None = None, headers: dict | None = None) -> None:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                503: "server_busy"}.get(code, "server_error" if code >= 500 else "invalid_request_error")
        self._send(code, {"error": {"message": msg, "type": kind, "param": param, "code": code}}, headers)

    def _route(self, method: str) -> None:
        path = self.path.split("?")[0].rstrip("/") or "/"
        if not self.app.authorized(self.headers.get("Authorization")):
            self.close_connection = True  # the body (if any) stays unread
            return self._error(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                               headers={"WWW-Authenticate": "Bearer"})
        routes = {"/health": "GET", "/v1/models": "GET", "/v1/completions": "POST",
                  "/update_weights_from_disk": "POST"}
        if path not in routes:
            if method != "GET":
                self.close_connection = True  # the body stays unread
            return self._error(404, f"no route {path[:200]}")
        if routes[path] != method:
            self.close_connection = True
            return self._error(405, f"{path} takes {routes[path]}", headers={"Allow": routes[path]})
        if path == "/health":
            return self._send(200, {"status": "ok"})
        if path == "/v1/models":
            return self._send(200, self.app.models())
        try:
            body = self._body()
        except HTTPError as e:
            self.close_connection = True
            return self._error(e.code, str(e))
        if path == "/v1/completions":
            return self._completions(body)
        return self._reload(body)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(411, "send the body with a Content-Length (no chunked transfer encoding)")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HTTPError(411, "Content-Length is required")
        try:
            n = int(raw)
        except ValueError:
            raise HTTPError(400, "bad Content-Length") from None
        if n < 0:
            raise HTTPError(400, "bad Content-Length")
        if n > self.cfg.limits.max_body_bytes:
            raise HTTPError(413, f"body of {n} bytes is over the limit of {self.cfg.limits.max_body_bytes}")
        data = self.rfile.read(n)
        try:
            body = parse_json(data or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"bad JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    # ---- completions ---------------------------------------------------------------
    def _completions(self, body: dict) -> None:
        try:
            job = parse_completion(body, model_name=self.cfg.model_name, context=self.app.context,
                                   vocab_size=self.app.vocab_size, tokenizer=self.app.tokenizer, limits=self.cfg.limits,
                                   ids=self.app.ids, arithmetic_modes=self.app.arithmetic_modes)
        except HTTPError as e:
            return self._error(e.code, str(e), e.param)
        if not self.app.places.acquire(timeout=self.cfg.queue_timeout):
            return self._error(503, "server busy: too many requests at once, retry later",
                               headers={"Retry-After": "1"})
        try:
            futs = self.app.worker.submit(job.reqs)
            if job.stream:
                return self._stream(job, futs)
            comps = []
            for f in futs:
                try:
                    comps.append(f.result())
                except Exception as e:  # noqa: BLE001 - an engine failure of this request
                    return self._error(500, str(e) if isinstance(e, EngineStepError) else
                                       f"engine failure: {type(e).__name__}: {e}")
            bad = [c for c in comps if c.finish_reason == "error"]
            if bad:
                return self._error(400, bad[0].error or "request failed")
            choices = [choice(k, c, r.stop, job.keep_stop, job.prompts[p] if job.echo else "", job.arithmetic == "exact")
                       for k, (r, c, p) in enumerate(zip(job.reqs, comps, job.prompt_of))]
            self._send(200, {"id": job.reqs[0].id, "object": "text_completion", "created": int(time.time()),
                             "model": self.cfg.model_name, "choices": choices, "usage": usage(job, comps)})
        finally:
            self.app.places.release()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")

    def _event(self, obj: Any) -> None:
        self._chunk(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

    def _stream(self, job: CompletionJob, futs: list[Future]) -> None:
        """Server-sent events as vLLM sends them: a chunk per choice with its text, then
        (stream_options.include_usage) a usage chunk, then `data: [DONE]`. Engines return
        whole completions, so each choice's text comes in one chunk when it finishes."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        head = {"id": job.reqs[0].id, "object": "text_completion", "created": int(time.time()),
                "model": self.cfg.model_name}
        where = {id(f): k for k, f in enumerate(futs)}
        comps: list[Completion | None] = [None] * len(futs)
        try:
            for f in as_completed(futs):
                k = where[id(f)]
                try:
                    c = f.result()
                except Exception as e:  # noqa: BLE001
                    c = None
                    err = str(e) if isinstance(e, EngineStepError) else f"engine failure: {type(e).__name__}: {e}"
                if c is not None and c.finish_reason == "error":
                    c, err = None, c.error or "request failed"
                if c is None:
                    self._event({"error": {"message": err, "type": "server_error", "param": None, "code": 500}})
                    self.app.worker.cancel([r.id for r in job.reqs])
                    break
                comps[k] = c
                r = job.reqs[k]
                ch = choice(k, c, r.stop, job.keep_stop, job.prompts[job.prompt_of[k]] if job.echo else "",
                            job.arithmetic == "exact")
                self._event({**head, "choices": [ch]})
            else:
                if job.include_usage:
                    self._event({**head, "choices": [], "usage": usage(job, comps)})
            self._event(b"[DONE]")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            self.app.worker.cancel([r.id for r in job.reqs])  # stop decoding for a client that left

    # ---- weight reload -----------------------------------------------------------
    def _reload(self, body: dict) -> None:
        if self.app.root is None:
            return self._send(404, {"success": False, "message": "weight reload is off (start the server "
                                                                 "with --allow-reload ROOT)"})
        unknown = sorted(set(body) - {"model_path"})
        if unknown:
            return self._send(400, {"success": False, "message": f"unknown field '{unknown[0]}'"})
        path = body.get("model_path")
        if not isinstance(path, str) or not path or "\x00" in path or len(path) > self.cfg.limits.max_path_chars:
            return self._send(400, {"success": False, "message": "'model_path' must be a folder path"})
        try:
            msg = self.app.reload(path)
        except ReloadError as e:
            log.warning("weight reload from %r refused: %s", path, e)
            return self._send(e.code, {"success": False, "message": str(e)})
        except Exception as e:  # noqa: BLE001 - e.g. a failure of another engine's swap
            log.warning("weight reload from %r failed: %s", path, first_line(e))
            return self._send(400, {"success": False, "message": f"cannot load weights: {first_line(e)}"})
        log.info("%s", msg)
        self._send(200, {"success": True, "message": msg})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app: App):
        cfg = app.cfg
        self.request_queue_size = cfg.backlog  # listen() uses it in server_activate
        self.app = app
        if ":" in cfg.host:
            self.address_family = socket.AF_INET6
        super().__init__((cfg.host, cfg.port), Handler)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client that went away
        log.exception("error while handling a request from %s", client_address[0])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_server(engine: Engine, cfg: ServeConfig) -> tuple[Server, EngineWorker]:
    """Bind the server (port 0 picks a free one) and start its engine thread.

    The caller runs `httpd.serve_forever()` (possibly in a thread); stop it with
    `httpd.shutdown(); httpd.server_close(); worker.close()`.
    """
    worker = EngineWorker(engine)
    try:
        httpd = Server(App(worker, cfg))
    except OSError as e:
        worker.close()
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
    return httpd, worker
