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
       "message"}); off unless a reload root is given; the engine loads and checks the new
       weights first, then swaps them in between engine steps (the old model serves until
       then and keeps serving if anything is wrong).

With an API key every endpoint wants `Authorization: Bearer KEY` (401 otherwise).
Security and limits: docs/serving.md.
"""

# The pieces: config.py (ServeConfig, Limits, the window), requests.py (request bodies and
# answers), worker.py (the engine thread), app.py (shared state, weight reload), server.py
# (the HTTP handler, the listening server, start_server).
from apr.serve.config import Limits, ServeConfig, serving_window
from apr.serve.server import Server, is_loopback, start_server
from apr.serve.worker import EngineWorker

__all__ = ["EngineWorker", "Limits", "ServeConfig", "Server", "is_loopback", "serving_window", "start_server"]
