"""`apr serve --model DIR`: an OpenAI-compatible completions server (see `apr.serve`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import apr.serve
from apr.commands.options import (CONTEXT_MAX, CONTEXT_MIN, add_deprecated_alias, add_device_options, context_tokens,
                                  port, positive_int)
from apr.errors import UserError
from apr.serve import ServeConfig, is_loopback, serving_window, start_server
from apr.serve.config import DEFAULT_CONTEXT

_DEFAULTS = ServeConfig()


def cmd_serve(args) -> int:
    model = Path(args.model)
    if not model.is_dir():
        raise UserError("model folder not found", str(model))
    context = serving_window(model, args.context)  # before anything loads: a window past the model is refused
    if args.context is not None and context < args.context:
        print(f"apr serve: --context {args.context} is more than the model was trained for; serving {context}",
              file=sys.stderr)
    api_key = args.api_key if args.api_key is not None else os.environ.get("APR_API_KEY") or None
    cfg = ServeConfig(host=args.host, port=args.port, model_name=args.served_model or model.resolve().name,
                      context=context, api_key=api_key, reload_root=args.allow_reload, access_log=not args.no_access_log,
                      backlog=args.backlog, max_concurrency=args.max_concurrency)

    from apr.engine.local import LocalEngine

    engine = LocalEngine(model, max_slots=args.max_slots, max_len=context, device=args.device, dtype=args.dtype)
    try:
        httpd, worker = start_server(engine, cfg)
    except UserError:
        engine.close()
        raise
    # The access log: one timestamped line per request on stderr, apart from status lines.
    access = logging.getLogger("apr.serve.access")
    saved = (access.level, access.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    host, bound = httpd.server_address[:2]
    if not is_loopback(cfg.host) and not cfg.api_key:
        print(f"apr serve: warning: listening on {cfg.host} without an API key: anyone who can reach "
              f"port {bound} can use the model (set --api-key or APR_API_KEY)", file=sys.stderr)
    reload = f"weight reload under {Path(cfg.reload_root).resolve()}" if cfg.reload_root else "weight reload off"
    auth = "API key required" if cfg.api_key else "no API key"
    print(f"apr serve: {cfg.model_name} on http://{host}:{bound}/v1 ({engine.device}, {args.max_slots} slots, "
          f"context {context}; {auth}; {reload})", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        worker.close()
        access.removeHandler(handler)
        access.setLevel(saved[0])
        access.propagate = saved[1]
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible completions API",
                              description=apr.serve.__doc__)
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face Llama model folder (required)")
    p.add_argument("--host", default=_DEFAULTS.host,
                   help="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=port, default=_DEFAULTS.port, metavar="PORT",
                   help="port to listen on, 0..65535 (0: any free one)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on every endpoint (default: $APR_API_KEY, else none)")
    p.add_argument("--allow-reload", metavar="ROOT", default=None,
                   help="turn on POST /update_weights_from_disk for model folders inside ROOT (default: off)")
    p.add_argument("--served-model", default=None, metavar="NAME",
                   help="the model name clients ask for (default: the model folder's name)")
    p.add_argument("--context", type=context_tokens, default=None, metavar="TOKENS",
                   help=f"tokens per sequence, prompt + generated, {CONTEXT_MIN}..{CONTEXT_MAX} and at most the "
                        "model's positions (config.json max_position_embeddings); capped at what the model was trained "
                        "or is evaluated for (apr.json context, eval_context) (default: the window it is evaluated at, "
                        f"apr.json eval_context, else context; {DEFAULT_CONTEXT} for a folder without apr.json)")
    p.add_argument("--max-slots", type=positive_int, default=64, metavar="N",
                   help="sequences decoded together (KV-cache slots)")
    p.add_argument("--max-concurrency", type=positive_int, default=_DEFAULTS.max_concurrency, metavar="N",
                   help="completion requests handled at once; more wait up to "
                        f"{_DEFAULTS.queue_timeout:g} s, then get 503")
    p.add_argument("--backlog", type=positive_int, default=_DEFAULTS.backlog, metavar="N",
                   help="listen backlog: connections the kernel queues before accepting")
    add_device_options(p)
    p.add_argument("--no-access-log", action="store_true",
                   help="turn off the access log (default: one line per request on stderr: client, method, "
                        "path, status, latency)")
    add_deprecated_alias(p, "--max-len", "--context")
    add_deprecated_alias(p, "--served-model-name", "--served-model")
    p.set_defaults(func=cmd_serve)
