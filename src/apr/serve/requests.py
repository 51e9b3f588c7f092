"""Completions requests: strict JSON, every field of a body checked before the engine sees it
(a bad request fails alone, 400 naming the field), and the vLLM-shaped answer.

One field is ours: `"arithmetic": "exact"` asks for exact arithmetic (apr.arithmetic: the
engine writes the results of `Exploring Operation` lines and the goal lines after
single-number results). Its answers carry what was written for the model, as extensions:
`usage.forced_tokens` and per choice `forced_spans` (character spans of its text). Clients
check for them, so a server that ignores the field is caught."""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from apr.arithmetic import MODES as ARITHMETIC_MODES
from apr.engine.base import Completion, Request, SamplingParams
from apr.serve.config import Limits

INT64 = 2**63


class HTTPError(Exception):
    """A request refused with an HTTP status (`param`: the field at fault, for OpenAI's error shape)."""

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
           "presence_penalty", "frequency_penalty", "logit_bias", "suffix", "arithmetic"}


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
    arithmetic: str = "model"  # exact: answers report forced tokens


def parse_completion(body: dict, *, model_name: str, context: int, vocab_size: int | None, tokenizer,
                     limits: Limits, ids: itertools.count,
                     arithmetic_modes: tuple[str, ...] = ("model",)) -> CompletionJob:
    """Check every field of a completions body; HTTPError (400/404) names the first bad one.
    `arithmetic_modes`: those the engine honours."""
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

    arithmetic = body.get("arithmetic")
    arithmetic = "model" if arithmetic is None else arithmetic
    if not isinstance(arithmetic, str) or arithmetic not in ARITHMETIC_MODES:
        raise BadRequest(f"'arithmetic' must be one of {', '.join(ARITHMETIC_MODES)}, got {json.dumps(arithmetic)[:40]}",
                         "arithmetic")
    if arithmetic not in arithmetic_modes:
        raise BadRequest(f"'arithmetic' {arithmetic} is not supported by this server's engine", "arithmetic")

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
            reqs.append(Request(f"cmpl-{next(ids)}", p, budgets[i], list(stop), sp, cache_key=ck, arithmetic=arithmetic))
            prompt_of.append(i)
    return CompletionJob(reqs, prompts, prompt_of, keep_stop, echo, stream, include_usage, arithmetic)


# ---------------------------------------------------------------------------- answers


def choice(i: int, c: Completion, stops: list[str], keep_stop: bool, prefix: str = "", exact: bool = False) -> dict:
    """One choice as vLLM shapes it: the stop string cut from `text` (unless kept) and named
    in `stop_reason`, null for EOS. `exact`: with `forced_spans`, in the text as sent."""
    text, matched = c.text, None
    if c.finish_reason == "stop":
        matched = max((s for s in stops if s and text.endswith(s)), key=len, default=None)
        if matched is not None and not keep_stop:
            text = text[: len(text) - len(matched)]
    finish = "length" if c.finish_reason == "length" else "stop"
    out = {"index": i, "text": prefix + text, "logprobs": None, "finish_reason": finish, "stop_reason": matched}
    if exact:
        n = len(prefix)
        out["forced_spans"] = [[n + a, n + min(b, len(text))] for a, b in c.forced_spans if a < len(text)]
    return out


def usage(job: CompletionJob, comps: list[Completion]) -> dict:
    prompt_tokens: dict[int, int] = {}
    for p, c in zip(job.prompt_of, comps):
        prompt_tokens.setdefault(p, c.prompt_tokens)  # a prompt counts once, however many samples
    out = {"prompt_tokens": sum(prompt_tokens.values()), "completion_tokens": sum(c.n_tokens for c in comps)}
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["prompt_tokens_details"] = {"cached_tokens": sum(c.cached_tokens for c in comps)}
    if job.arithmetic == "exact":  # of completion_tokens, those the engine wrote
        out["forced_tokens"] = sum(c.forced_tokens for c in comps)
    return out

