"""An OpenAI-compatible completions server over an engine (`apr serve` runs it).

HTTP handler threads (ThreadingHTTPServer) authenticate, parse and validate requests, then
wait; one engine thread owns the engine and batches every concurrent request into the same
decode steps. A request is checked field by field before it reaches the engine, so a bad
one fails alone (400); if an engine step still fails, the requests that were in it are
rerun one at a time and only the one that fails alone gets the error (500).

Endpoints:
  GET  /health, GET /v1/models (`max_model_len`: the model's window, see `ServeConfig.context`)
  POST /v1/completions: vLLM-shaped (the stop string is stripped from `text` and reported in
       `stop_reason`, null for EOS); `n` (samples with seeds seed, seed+1, ...), `echo`,
       `stream` (server-sent events, then `data: [DONE]`); `logprobs` is refused (400).
       Extensions: `top_k`, `seed`, `include_stop_str_in_output` (as in vLLM) and
       `cache_key` (keep/reuse the request's KV cache, see `apr.engine.base.Request`).
  POST /update_weights_from_disk: SGLang-shaped ({"model_path": ...} -> {"success",
       "message"}); off unless a reload root is given; loads and checks the new weights
       first, then swaps them in between engine steps (the old model serves until then
       and keeps serving if anything is wrong).

With an API key every endpoint wants `Authorization: Bearer KEY` (401 otherwise).
Security and limits: docs/serving.md.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import itertools
import json
import logging
import math
import queue
import random
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from apr.engine.base import Completion, Engine, Request, SamplingParams
from apr.errors import UserError

log = logging.getLogger("apr.serve")
access_log = logging.getLogger("apr.serve.access")

INT64 = 2**63


@dataclass(frozen=True)
class Limits:
    """Sizes one request may have (bigger ones are refused with 400 or 413)."""

    max_body_bytes: int = 8 << 20
    max_prompts: int = 256  # prompts in one request
    max_n: int = 16  # samples per prompt
    max_choices: int = 256  # prompts x n
    max_stop: int = 16  # stop strings
    max_stop_chars: int = 256  # characters per stop string
    max_cache_key_chars: int = 256
    max_path_chars: int = 4096  # model_path of a weight reload


@dataclass
class ServeConfig:
    model_name: str = "apr"  # the name clients ask for (`model`); others get 404
    # The window requests are checked against and /v1/models reports: the caller passes the
    # smaller of what it wants and what the model was trained for; start_server also caps it
    # at the local engine's KV-cache length.
    context: int = 4096
    api_key: str | None = None  # None: no authentication
    reload_root: str | Path | None = None  # None: /update_weights_from_disk is off
    access_log: bool = True  # one line per request on the `apr.serve.access` logger
    backlog: int = 2048  # listen backlog (the kernel caps it at net.core.somaxconn)
    max_concurrency: int = 1024  # completion requests handled at once; more wait for a place
    queue_timeout: float = 60.0  # seconds a request waits for a place before a 503
    idle_timeout: float = 120.0  # seconds an idle keep-alive connection stays open
    limits: Limits = field(default_factory=Limits)


# ---------------------------------------------------------------------------- engine thread


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


# ---------------------------------------------------------------------------- requests


class HTTPError(Exception):
    def __init__(self, code: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.code, self.param, self.headers = code, param, headers or {}


class BadRequest(HTTPError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(400, message, param)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} is out of range")
    return x


def parse_json(data: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no numbers that overflow a float (1e999)."""
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _get_int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"'{name}' must be an integer, got {json.dumps(v)[:40]}", name)
    if not lo <= v <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return v


def _get_float(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(f"'{name}' must be a number, got {json.dumps(v)[:40]}", name)
    v = float(v)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise BadRequest(f"'{name}' must be in {rng}, got {v:g}", name)
    return v


def _get_bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"'{name}' must be true or false", name)
    return v


# Fields a completions body may carry. `user` is accepted and ignored (it only labels the
# caller); the penalties, `logit_bias` and `suffix` only in their neutral form; anything
# else is refused by name rather than silently ignored.
_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "best_of",
           "stream", "stream_options", "logprobs", "echo", "cache_key", "include_stop_str_in_output", "user",
           "presence_penalty", "frequency_penalty", "logit_bias", "suffix"}


@dataclass
class CompletionJob:
    """A validated completions request: one engine Request per choice (prompt x n)."""

    reqs: list[Request]
    prompts: list[str]  # the prompt of each choice (for echo)
    prompt_of: list[int]  # which prompt each choice samples
    keep_stop: bool
    echo: bool
    stream: bool
    include_usage: bool


def parse_completion(body: dict, *, model_name: str, context: int, vocab_size: int | None, tokenizer,
                     limits: Limits, ids: itertools.count) -> CompletionJob:
    """Check every field of a completions body; HTTPError (400/404) names the first bad one."""
    unknown = sorted(k for k in body if k not in _FIELDS)
    if unknown:
        raise BadRequest(f"unknown field '{unknown[0]}' (not supported by this server)", unknown[0])
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    if model is not None and model != model_name:
        raise HTTPError(404, f"The model `{model[:200]}` does not exist (this server serves `{model_name}`).", "model")

    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts:
        raise BadRequest("'prompt' must be a string or a non-empty list of strings", "prompt")
    if not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be text: token-id prompts are not supported", "prompt")
    if len(prompts) > limits.max_prompts:
        raise BadRequest(f"'prompt' has {len(prompts)} prompts, at most {limits.max_prompts} per request", "prompt")

    n = _get_int(body, "n", 1, 1, limits.max_n)
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise BadRequest("'best_of' is not supported (only best_of == n)", "best_of")
    if len(prompts) * n > limits.max_choices:
        raise BadRequest(f"{len(prompts)} prompts x n={n} is more than {limits.max_choices} choices", "n")
    if body.get("logprobs") is not None:
        raise BadRequest("'logprobs' is not supported (this server returns text only)", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get_float(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise BadRequest(f"'{name}' is not supported (only 0)", name)
    if body.get("logit_bias"):
        raise BadRequest("'logit_bias' is not supported", "logit_bias")
    if body.get("suffix"):
        raise BadRequest("'suffix' is not supported", "suffix")
    if "user" in body and body["user"] is not None and not isinstance(body["user"], str):
        raise BadRequest("'user' must be a string", "user")

    stream = _get_bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise BadRequest("'stream_options' needs 'stream': true", "stream_options")
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
            raise BadRequest("'stream_options' may only hold include_usage", "stream_options")
        if opts.get("continuous_usage_stats"):
            raise BadRequest("'stream_options.continuous_usage_stats' is not supported", "stream_options")
        include_usage = _get_bool(opts, "include_usage")
    echo = _get_bool(body, "echo")
    keep_stop = _get_bool(body, "include_stop_str_in_output")

    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    if len(stop) > limits.max_stop:
        raise BadRequest(f"'stop' has {len(stop)} strings, at most {limits.max_stop}", "stop")
    if any(len(s) > limits.max_stop_chars for s in stop):
        raise BadRequest(f"'stop' strings may have at most {limits.max_stop_chars} characters", "stop")

    temperature = _get_float(body, "temperature", 1.0, 0.0, 1e6)
    top_p = _get_float(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    top_k = _get_int(body, "top_k", 0, -1, vocab_size if vocab_size else 2**31 - 1)
    seed = _get_int(body, "seed", None, -INT64, INT64 - 1)
    if seed is None:
        seed = random.getrandbits(32)
    key = body.get("cache_key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > limits.max_cache_key_chars):
        raise BadRequest(f"'cache_key' must be a non-empty string of at most {limits.max_cache_key_chars} characters",
                         "cache_key")

    max_tokens = _get_int(body, "max_tokens", None, 0, context)
    default_max = max_tokens is None
    if default_max:
        max_tokens = 16
    budgets = [max_tokens] * len(prompts)
    if tokenizer is not None:  # the window holds prompt (with special tokens) + max_tokens
        for i, p in enumerate(prompts):
            n_ids = len(tokenizer(p, add_special_tokens=True)["input_ids"])
            where = f"prompt[{i}]" if len(prompts) > 1 else "the prompt"
            if n_ids == 0:
                raise BadRequest(f"{where} is empty (no tokens)", "prompt")
            if n_ids >= context:
                raise BadRequest(f"{where} has {n_ids} tokens; the model's context is {context} tokens", "prompt")
            room = context - n_ids
            if max_tokens > room:
                if not default_max:
                    raise BadRequest(f"'max_tokens' {max_tokens} + {n_ids} prompt tokens is more than the model's "
                                     f"context of {context} tokens (at most {room} for {where})", "max_tokens")
                budgets[i] = room  # only the default (16) adapts to a long prompt

    reqs, prompt_of = [], []
    total = len(prompts) * n
    for i, p in enumerate(prompts):
        for j in range(n):
            k = i * n + j
            sp = SamplingParams(temperature=temperature, top_k=max(top_k, 0), top_p=top_p, seed=seed + k)
            ck = None if key is None else f"{key}#{k}" if total > 1 else key
            reqs.append(Request(f"cmpl-{next(ids)}", p, budgets[i], list(stop), sp, cache_key=ck))
            prompt_of.append(i)
    return CompletionJob(reqs, prompts, prompt_of, keep_stop, echo, stream, include_usage)


def _choice(i: int, c: Completion, stops: list[str], keep_stop: bool, prefix: str = "") -> dict:
    text, matched = c.text, None
    if c.finish_reason == "stop":
        matched = max((s for s in stops if s and text.endswith(s)), key=len, default=None)
        if matched is not None and not keep_stop:
            text = text[: len(text) - len(matched)]
    finish = "length" if c.finish_reason == "length" else "stop"
    return {"index": i, "text": prefix + text, "logprobs": None, "finish_reason": finish, "stop_reason": matched}


def _usage(job: CompletionJob, comps: list[Completion]) -> dict:
    prompt_tokens: dict[int, int] = {}
    for p, c in zip(job.prompt_of, comps):
        prompt_tokens.setdefault(p, c.prompt_tokens)  # a prompt counts once, however many samples
    usage = {"prompt_tokens": sum(prompt_tokens.values()), "completion_tokens": sum(c.n_tokens for c in comps)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    usage["prompt_tokens_details"] = {"cached_tokens": sum(c.cached_tokens for c in comps)}
    return usage


# ---------------------------------------------------------------------------- weight reload


class ReloadError(Exception):
    def __init__(self, message: str, code: int = 400):
        super().__init__(message)
        self.code = code


def reload_folder(root: Path, model_path: str) -> Path:
    """The folder `model_path` names, if it is a local folder inside `root` (resolved, so a
    symlink cannot lead out). Paths outside the root get one answer whether or not they
    exist; a bare name is a folder under the root, never a model-hub name."""
    outside = ReloadError(f"model_path {model_path!r} is not inside the reload root", 403)
    p = Path(model_path)
    if not p.is_absolute():
        p = root / p
    try:
        real = p.resolve()
    except (OSError, RuntimeError, ValueError):
        raise outside from None
    if not real.is_relative_to(root):
        raise outside
    if not real.is_dir():
        raise ReloadError(f"model_path {model_path!r}: no folder there (inside the reload root)")
    for entry in real.iterdir():  # the loader reads these: none may lead out of the root
        if not entry.resolve().is_relative_to(root):
            raise ReloadError(f"model_path {model_path!r}: {entry.name} links outside the reload root", 403)
    if not (real / "config.json").is_file():
        raise ReloadError(f"model_path {model_path!r}: not a model folder (no config.json)")
    return real


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}"[:300]


def load_candidate(folder: Path, eng) -> dict:
    """Load a model folder for a LocalEngine and check it fits: same architecture, shapes,
    rotary embedding, tokenizer and end tokens, every weight present and finite. Returns
    the HF state dict to swap in; ReloadError says what does not fit. Runs off the engine
    thread (the old model keeps serving meanwhile); reads local files only."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from apr.engine.llama import ModelArgs, Transformer, rope_inv_freq
    from apr.tokenizer import tokenizer_fingerprint

    try:
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable config is a refusal, not a crash
        raise ReloadError(f"not a Hugging Face model folder ({_first_line(e)})") from None
    if getattr(cfg, "model_type", None) != getattr(eng.model_config, "model_type", None):
        raise ReloadError(f"different architecture: model_type {getattr(cfg, 'model_type', None)!r}, "
                          f"served {eng.model_config.model_type!r}")
    try:
        args = ModelArgs.from_hf_config(cfg)
        inv, scaling = rope_inv_freq(cfg, args.head_dim)
    except Exception as e:  # noqa: BLE001
        raise ReloadError(f"unusable config ({_first_line(e)})") from None
    old = eng.model.args
    diff = [f"{f.name} {getattr(args, f.name)} (served {getattr(old, f.name)})"
            for f in dataclasses.fields(old) if getattr(args, f.name) != getattr(old, f.name)]
    if diff:
        raise ReloadError("different architecture: " + ", ".join(diff))
    if inv.shape != eng.model.inv_freq.shape or not torch.allclose(inv.cpu(), eng.model.inv_freq.float().cpu()) \
            or scaling != eng.model.rope_scaling:
        raise ReloadError("different rotary position embedding (rope parameters)")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise ReloadError(f"no readable tokenizer ({_first_line(e)})") from None
    new_fp, old_fp = tokenizer_fingerprint(tok), tokenizer_fingerprint(eng.tokenizer)
    if new_fp != old_fp:
        raise ReloadError(f"different tokenizer ({new_fp}, served {old_fp})")
    eos = set()
    for e in (getattr(cfg, "eos_token_id", None), tok.eos_token_id):
        eos.update([e] if isinstance(e, int) else e if isinstance(e, (list, tuple)) else [])
    if eos != set(eng.eos_ids):
        raise ReloadError(f"different end-of-sequence tokens {sorted(eos)} (served {sorted(eng.eos_ids)})")
    try:
        hf, info = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=eng.dtype,
                                                         output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        raise ReloadError(f"cannot load the weights ({_first_line(e)})") from None
    missing = [k for k in info.get("missing_keys", ()) if not (args.tie_embeddings and k == "lm_head.weight")]
    bad = missing + [str(k) for k in info.get("mismatched_keys", ())]
    if bad:
        raise ReloadError(f"the checkpoint lacks or misshapes {len(bad)} weights (e.g. {bad[0]})")
    sd = hf.state_dict()
    del hf
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ReloadError(f"weight {k} has NaN or infinite values")
    with torch.device("meta"):  # a dry run of the real copy: every key and shape, no memory
        probe = Transformer(args, inv, scaling)
    try:
        probe.load_hf_state_dict(sd)
    except Exception as e:  # noqa: BLE001
        raise ReloadError(f"weights do not fit the served model ({_first_line(e)})") from None
    return sd


def swap_weights(eng, sd: dict, folder: Path) -> None:
    """On the engine thread, nothing running: copy the checked weights in; if the copy fails
    half way, put the old weights back so no mix of two models serves."""
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in eng.model.state_dict().items()}
    try:
        eng.load_weights(sd)
    except Exception as e:  # noqa: BLE001
        eng.model.load_state_dict(snapshot)
        raise ReloadError(f"swap failed, the old weights keep serving ({_first_line(e)})", 500) from None
    eng.model_path = str(folder)


def _local_engine(engine: Engine):
    """The engine if it is a LocalEngine (without importing torch when it cannot be one)."""
    local = sys.modules.get("apr.engine.local")
    if local is not None and isinstance(engine, local.LocalEngine):
        return engine
    return None


# ---------------------------------------------------------------------------- HTTP


class App:
    """What every handler thread shares: the worker, the settings, counters and locks."""

    def __init__(self, worker: EngineWorker, cfg: ServeConfig):
        self.worker, self.cfg = worker, cfg
        eng = worker.engine
        self.tokenizer = eng.tokenizer
        local = _local_engine(eng)
        self.context = min(cfg.context, local.max_len) if local is not None else cfg.context
        self.vocab_size = local.model.args.vocab_size if local is not None else None
        self.key = cfg.api_key.encode() if cfg.api_key else None
        self.root = Path(cfg.reload_root).resolve() if cfg.reload_root is not None else None
        self.places = threading.BoundedSemaphore(cfg.max_concurrency)
        self.reload_lock = threading.Lock()
        self.ids = itertools.count()

    def authorized(self, header: str | None) -> bool:
        if self.key is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), self.key)
        return ok and scheme.lower() == "bearer"

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "apr", "root": self.cfg.model_name,
                                            "max_model_len": self.context}]}

    def reload(self, model_path: str) -> str:
        assert self.root is not None
        folder = reload_folder(self.root, model_path)
        with self.reload_lock:  # one at a time; inference goes on while the new weights load
            local = _local_engine(self.worker.engine)
            if local is None:  # another engine checks its own weights
                self.worker.call(lambda e: e.reload_weights(folder))
            else:
                sd = load_candidate(folder, local)
                self.worker.call(lambda e: swap_weights(e, sd, folder))
        return f"loaded weights from {model_path}"


def make_handler(app: App):
    cfg = app.cfg

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for the client's connection pool
        server_version = "apr-serve"
        sys_version = ""
        timeout = cfg.idle_timeout

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
                if self._t0 is not None and cfg.access_log:
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
            if not app.authorized(self.headers.get("Authorization")):
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
                return self._send(200, app.models())
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
            if n > cfg.limits.max_body_bytes:
                raise HTTPError(413, f"body of {n} bytes is over the limit of {cfg.limits.max_body_bytes}")
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
                job = parse_completion(body, model_name=cfg.model_name, context=app.context,
                                       vocab_size=app.vocab_size, tokenizer=app.tokenizer, limits=cfg.limits,
                                       ids=app.ids)
            except HTTPError as e:
                return self._error(e.code, str(e), e.param)
            if not app.places.acquire(timeout=cfg.queue_timeout):
                return self._error(503, "server busy: too many requests at once, retry later",
                                   headers={"Retry-After": "1"})
            try:
                futs = app.worker.submit(job.reqs)
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
                choices = [_choice(k, c, r.stop, job.keep_stop, job.prompts[p] if job.echo else "")
                           for k, (r, c, p) in enumerate(zip(job.reqs, comps, job.prompt_of))]
                self._send(200, {"id": job.reqs[0].id, "object": "text_completion", "created": int(time.time()),
                                 "model": cfg.model_name, "choices": choices, "usage": _usage(job, comps)})
            finally:
                app.places.release()

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
                    "model": cfg.model_name}
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
                        app.worker.cancel([r.id for r in job.reqs])
                        break
                    comps[k] = c
                    r = job.reqs[k]
                    ch = _choice(k, c, r.stop, job.keep_stop, job.prompts[job.prompt_of[k]] if job.echo else "")
                    self._event({**head, "choices": [ch]})
                else:
                    if job.include_usage:
                        self._event({**head, "choices": [], "usage": _usage(job, comps)})
                self._event(b"[DONE]")
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True
                app.worker.cancel([r.id for r in job.reqs])  # stop decoding for a client that left

        # ---- weight reload -----------------------------------------------------------
        def _reload(self, body: dict) -> None:
            if app.root is None:
                return self._send(404, {"success": False, "message": "weight reload is off (start the server "
                                                                     "with --allow-reload ROOT)"})
            unknown = sorted(set(body) - {"model_path"})
            if unknown:
                return self._send(400, {"success": False, "message": f"unknown field '{unknown[0]}'"})
            path = body.get("model_path")
            if not isinstance(path, str) or not path or "\x00" in path or len(path) > cfg.limits.max_path_chars:
                return self._send(400, {"success": False, "message": "'model_path' must be a folder path"})
            try:
                msg = app.reload(path)
            except ReloadError as e:
                log.warning("weight reload from %r refused: %s", path, e)
                return self._send(e.code, {"success": False, "message": str(e)})
            except Exception as e:  # noqa: BLE001 - e.g. another engine's reload_weights
                log.warning("weight reload from %r failed: %s", path, _first_line(e))
                return self._send(400, {"success": False, "message": f"cannot load weights: {_first_line(e)}"})
            log.info("%s", msg)
            self._send(200, {"success": True, "message": msg})

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, handler, backlog: int, app: App):
        self.request_queue_size = backlog  # listen() uses it in server_activate
        self.app = app
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)

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


def start_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, model_name: str = "apr",
                 context: int = 4096, **options) -> tuple[ThreadingHTTPServer, EngineWorker]:
    """Bind the server (port 0 picks a free one) and start its engine thread. `options` are
    the other `ServeConfig` fields (api_key, reload_root, access_log, backlog, ...).

    The caller runs `httpd.serve_forever()` (possibly in a thread); stop it with
    `httpd.shutdown(); httpd.server_close(); worker.close()`.
    """
    cfg = ServeConfig(model_name=model_name, context=context, **options)
    if cfg.api_key is not None and not cfg.api_key:
        raise UserError("the API key is empty")
    if cfg.reload_root is not None and not Path(cfg.reload_root).is_dir():
        raise UserError("the weight-reload root is not a folder", str(cfg.reload_root))
    if cfg.context < 2 or cfg.max_concurrency < 1 or cfg.backlog < 1:
        raise UserError("context must be >= 2, max_concurrency and backlog >= 1")
    worker = EngineWorker(engine)
    app = App(worker, cfg)
    try:
        httpd = Server((host, port), make_handler(app), cfg.backlog, app)
    except OSError as e:
        worker.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return httpd, worker
