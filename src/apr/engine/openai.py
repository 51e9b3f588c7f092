"""An `Engine` over an OpenAI-compatible completions server (vLLM, SGLang, `apr serve`).

Requests run concurrently on a thread pool (one blocking POST /v1/completions each, over a
shared httpx connection pool); `poll()` waits briefly and returns those that finished.
Servers strip the stop string from `text` and report it in `stop_reason` (vLLM) or
`matched_stop` (SGLang); we re-append it so `.text` includes it, as the local engine does.
`finish_reason == "stop"` with no matched string means EOS.

Requests are not streamed, so `first_token_time` is the time the response arrived.
KV-cache reuse is the server's business (vLLM/SGLang prefix caching); `cache_key` is only
sent when `send_cache_key=True` (understood by `apr serve`), and `release` is a no-op.

Exact arithmetic (`Request.arithmetic == "exact"`) is sent as the request field `arithmetic`,
which only `apr serve` understands; other servers ignore unknown fields, which would label
unassisted results as exact. So the mode is checked with the server before a run
(`check_arithmetic`: one tiny request whose answer must count `usage.forced_tokens`), and
every exact answer without that count is an error completion.

`api_key` (default: the `APR_API_KEY` environment variable) is sent as `Authorization:
Bearer KEY`. Servers refuse `max_tokens` past their window (`max_model_len` in
/v1/models); with a tokenizer, requests are clipped to it, as the local engine clips to
its KV cache.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx

from apr.engine.base import Completion, Engine, Request, StagedWeights
from apr.errors import UserError

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class OpenAIEngine(Engine):
    arithmetic_modes = ("model", "exact")  # exact: only on a server that honours it (check_arithmetic)

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        tokenizer=None,  # a tokenizer folder or object; None: token counts come from `usage`
        max_concurrency: int = 64,
        timeout: float = 600.0,  # seconds per HTTP request
        retries: int = 3,
        backoff: float = 0.5,  # seconds before the first retry, doubled each time
        api_key: str | None = None,
        send_cache_key: bool = False,
        poll_wait: float = 0.05,  # how long poll() waits for a completion
    ):
        url = base_url.rstrip("/")
        self.root = url[:-3] if url.endswith("/v1") else url  # weight reload lives at the root
        self.api = self.root + "/v1"
        self.max_concurrency, self.retries, self.backoff = max_concurrency, retries, backoff
        self.send_cache_key, self.poll_wait = send_cache_key, poll_wait
        if api_key is None:
            api_key = os.environ.get("APR_API_KEY") or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), headers=headers,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency))
        try:
            r = self.client.get(self.api + "/models")
            if r.status_code == 401:
                self.client.close()
                raise UserError(f"server at {base_url} wants an API key (HTTP 401): "
                                + ("the one given was refused" if api_key else "set APR_API_KEY or pass api_key"))
            r.raise_for_status()
            listed = [m for m in r.json().get("data", []) if isinstance(m, dict) and "id" in m]
        except (httpx.HTTPError, ValueError, KeyError, AttributeError) as e:
            self.client.close()
            raise UserError(f"cannot reach an OpenAI-compatible server at {base_url} ({type(e).__name__}: {e})") from None
        if model is None:
            if not listed:
                self.client.close()
                raise UserError(f"server at {base_url} lists no models; pass model=")
            model = listed[0]["id"]
        self.model = model
        # The server's window for this model (vLLM and `apr serve` report it), or None.
        window = next((m.get("max_model_len") for m in listed if m["id"] == model), None)
        self.max_model_len = window if isinstance(window, int) and not isinstance(window, bool) else None
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.tokenizer = tokenizer
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="apr-http")
        self.running: dict[Future, Request] = {}
        self.done: list[Completion] = []
        self._lock = threading.Lock()
        self._exact_checked = False

    # ---- interface ---------------------------------------------------------------
    def submit(self, req: Request) -> None:
        fut = self.pool.submit(self._run, req)
        with self._lock:
            self.running[fut] = req

    def poll(self) -> list[Completion]:
        with self._lock:
            futs = list(self.running)
        if futs and not self.done:
            wait(futs, timeout=self.poll_wait, return_when=FIRST_COMPLETED)
        out, self.done = self.done, []
        with self._lock:
            for f in [f for f in self.running if f.done()]:
                req = self.running.pop(f)
                try:
                    out.append(f.result())
                except Exception as e:  # _run catches its own errors; this is a last resort
                    now = time.perf_counter()
                    out.append(Completion(req.id, "", [], 0, "error", 0, 0, now, now, error=repr(e)))
        return out

    def release(self, cache_key: str) -> None:
        pass  # the server manages its own prefix cache

    def free_slots(self) -> int:
        return max(self.max_concurrency - len(self.running), 0)

    def pending(self) -> int:
        return len(self.running) + len(self.done)

    def abort(self) -> None:
        with self._lock:
            for f in self.running:
                f.cancel()  # requests not yet sent never start; those in flight end unread
            self.running.clear()
        self.done = []

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def swap_weights(self, staged: StagedWeights) -> None:
        """Ask the server to load new weights from a folder it can read (SGLang's endpoint);
        the server stages and checks them itself, so there is nothing to stage here."""
        path = staged.folder
        url = self.root + "/update_weights_from_disk"
        try:
            r = self.client.post(url, json={"model_path": str(path)})
        except httpx.HTTPError as e:
            raise UserError(f"weight reload failed: cannot reach {url} ({type(e).__name__}: {e})") from None
        try:
            body = r.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if r.status_code in (404, 405):
            why = body.get("message") if isinstance(body.get("message"), str) else None
            raise UserError(f"server at {self.root} cannot reload weights (HTTP {r.status_code} on "
                            f"/update_weights_from_disk{': ' + why if why else ''}; use SGLang or "
                            "`apr serve --allow-reload ROOT`)")
        if r.status_code == 401:
            raise UserError(f"server at {self.root} refused the weight reload: HTTP 401, wrong or missing API key")
        if r.status_code != 200 or not body.get("success", False):
            msg = body.get("message") or body.get("error") or r.text[:200]
            raise UserError(f"server could not reload weights from {path}: {msg}")

    def check_arithmetic(self, mode: str) -> None:
        """Exact arithmetic only where the server honours it: asked once with a one-token
        request (a server that does not know the field ignores it or refuses it)."""
        super().check_arithmetic(mode)
        if mode != "exact" or self._exact_checked:
            return
        body = {"model": self.model, "prompt": "Exploring Operation:", "max_tokens": 1, "temperature": 0.0,
                "arithmetic": "exact"}
        try:
            r = self.client.post(self.api + "/completions", json=body)
            ok = r.status_code == 200 and _forced_count(r.json()) is not None
        except (httpx.HTTPError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"`arithmetic` exact: the server at {self.root} does not support exact arithmetic (its "
                            "answers carry no usage.forced_tokens); use the local engine or `apr serve`",
                            fields=("arithmetic",))
        self._exact_checked = True

    # ---- one request -------------------------------------------------------------
    def _body(self, req: Request) -> dict:
        sp = req.sampling
        max_tokens = req.max_tokens
        if self.max_model_len is not None and self.tokenizer is not None:
            n_prompt = len(self.tokenizer(req.prompt)["input_ids"])
            if n_prompt < self.max_model_len:  # a prompt that does not fit gets the server's error
                max_tokens = min(max_tokens, self.max_model_len - n_prompt)
        body = {"model": self.model, "prompt": req.prompt, "max_tokens": max_tokens,
                "temperature": sp.temperature, "top_p": sp.top_p, "seed": sp.seed, "n": 1}
        if sp.top_k > 0:
            body["top_k"] = sp.top_k
        if req.stop:
            body["stop"] = list(req.stop)
        if self.send_cache_key and req.cache_key is not None:
            body["cache_key"] = req.cache_key
        if req.arithmetic != "model":
            body["arithmetic"] = req.arithmetic
        return body

    def _run(self, req: Request) -> Completion:
        start = time.perf_counter()
        body, err = self._body(req), "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self.client.post(self.api + "/completions", json=body)
            except httpx.HTTPError as e:  # connect errors, timeouts: retry
                err = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 200:
                try:
                    return self._parse(req, r.json(), start)
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    err = f"bad response: {e}"
                    break
            err = f"HTTP {r.status_code}: {r.text[:300]}"
            if r.status_code not in _RETRY_STATUS:
                break
        now = time.perf_counter()
        return Completion(req.id, "", [], 0, "error", 0, 0, now, now, error=err)

    def _parse(self, req: Request, data: dict, start: float) -> Completion:
        ch = data["choices"][0]
        text, reason = ch.get("text") or "", ch.get("finish_reason")
        matched = ch.get("stop_reason")
        if matched is None:
            matched = ch.get("matched_stop")
        if reason == "stop":
            if isinstance(matched, str) and matched:
                if not text.endswith(matched):  # unless the server kept it already
                    text += matched  # servers strip the stop string; ours keeps it
                reason = "stop"
            else:
                reason = "eos"  # no matched string (or a stop token id): end of sequence
        elif reason != "length":
            reason = "error"
        usage = data.get("usage") or {}
        n_prompt, n_gen = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if self.tokenizer is not None:
            if n_prompt is None:
                n_prompt = len(self.tokenizer(req.prompt)["input_ids"])
            if n_gen is None:
                n_gen = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(data["choices"]) == 1:  # usage covers this one request
            cached = ((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0
        else:
            cached = 0
        now = time.perf_counter()
        error = None if reason != "error" else f"finish_reason {ch.get('finish_reason')!r}"
        forced, spans = 0, []
        if req.arithmetic == "exact":  # the server must say what it wrote, else it ignored the mode
            forced, spans = _forced_count(data), ch.get("forced_spans")
            if forced is None or not isinstance(spans, list):
                reason, forced, spans = "error", 0, []
                error = f"the server at {self.root} does not support exact arithmetic (no usage.forced_tokens)"
            else:
                spans = [(int(a), min(int(b), len(text))) for a, b in spans]
        return Completion(req.id, text, [], int(n_gen or 0), reason, int(n_prompt or 0), int(cached),
                          first_token_time=now, end_time=now, error=error, forced_tokens=forced, forced_spans=spans)


def _forced_count(data: dict) -> int | None:
    """`usage.forced_tokens` of an answer (`apr serve`'s exact arithmetic), None without it."""
    n = (data.get("usage") or {}).get("forced_tokens") if isinstance(data, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None
