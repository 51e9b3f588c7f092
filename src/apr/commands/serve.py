"""`apr serve --model DIR`: an OpenAI-compatible completions server (see `apr.serve`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import apr.serve
from apr.errors import UserError
from apr.serve import ServeConfig, is_loopback, start_server

_DEFAULTS = ServeConfig()


def _check(args) -> None:
    """Bad option values are one-line errors before anything loads."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    if args.max_slots < 1:
        raise UserError(f"--max-slots must be >= 1, got {args.max_slots}")
    if args.context < 2:
        raise UserError(f"--context must be >= 2, got {args.context}")
    if args.max_concurrency < 1:
        raise UserError(f"--max-concurrency must be >= 1, got {args.max_concurrency}")
    if args.backlog < 1:
        raise UserError(f"--backlog must be >= 1, got {args.backlog}")
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key is empty")
    if args.allow_reload is not None and not Path(args.allow_reload).is_dir():
        raise UserError("--allow-reload: not a folder", args.allow_reload)


def model_window(model: Path, wanted: int) -> int:
    """The smaller of the wanted context and what the model was trained for (apr.json
    `context`; a folder without apr.json: its config's max_position_embeddings)."""
    from apr.model import load_model_info

    if (model / "apr.json").is_file():
        return min(wanted, load_model_info(model).context)
    try:
        import json

        n = json.loads((model / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        n = None
    return min(wanted, n) if isinstance(n, int) and n > 1 else wanted


def cmd_serve(args) -> int:
    if args.api_key is None:
        args.api_key = os.environ.get("APR_API_KEY") or None
    _check(args)
    model = Path(args.model)
    if not model.is_dir():
        raise UserError("model folder not found", str(model))
    context = model_window(model, args.context)
    if context < args.context:
        print(f"apr serve: --context {args.context} is more than the model was trained for; serving {context}",
              file=sys.stderr)

    from apr.engine.local import LocalEngine

    engine = LocalEngine(model, max_slots=args.max_slots, max_len=context, device=args.device, dtype=args.dtype)
    name = args.served_model or model.resolve().name
    try:
        httpd, worker = start_server(
            engine, args.host, args.port, name, context, api_key=args.api_key, reload_root=args.allow_reload,
            access_log=not args.no_access_log, backlog=args.backlog, max_concurrency=args.max_concurrency)
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
    host, port = httpd.server_address[:2]
    if not is_loopback(args.host) and not args.api_key:
        print(f"apr serve: warning: listening on {args.host} without an API key: anyone who can reach "
              f"port {port} can use the model (set --api-key or APR_API_KEY)", file=sys.stderr)
    reload = f"weight reload under {Path(args.allow_reload).resolve()}" if args.allow_reload else "weight reload off"
    auth = "API key required" if args.api_key else "no API key"
    print(f"apr serve: {name} on http://{host}:{port}/v1 ({engine.device}, {args.max_slots} slots, "
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


class _Deprecated(argparse.Action):
    """An old option name: still works, says once which name to use."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"apr serve: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible completions API",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=apr.serve.__doc__)
    p.add_argument("--model", required=True, metavar="DIR", help="Hugging Face Llama model folder (required)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on, 0 = any free one (default: %(default)s)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on every endpoint (default: $APR_API_KEY, else none)")
    p.add_argument("--allow-reload", metavar="ROOT", default=None,
                   help="turn on POST /update_weights_from_disk for model folders inside ROOT (default: off)")
    p.add_argument("--served-model", default=None, metavar="NAME",
                   help="the model name clients ask for (default: the model folder's name)")
    p.add_argument("--context", type=int, default=4096,
                   help="tokens per sequence, prompt + generated; capped at the model's trained context "
                        "(default: %(default)s)")
    p.add_argument("--max-slots", type=int, default=64,
                   help="sequences decoded together (KV-cache slots) (default: %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=_DEFAULTS.max_concurrency,
                   help="completion requests handled at once; more wait up to "
                        f"{_DEFAULTS.queue_timeout:g} s, then get 503 (default: %(default)s)")
    p.add_argument("--backlog", type=int, default=_DEFAULTS.backlog,
                   help="listen backlog: connections the kernel queues before accepting (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight dtype; auto = bfloat16 on GPU, float32 on CPU (default: %(default)s)")
    p.add_argument("--no-access-log", action="store_true",
                   help="turn off the access log (default: one line per request on stderr: client, method, "
                        "path, status, latency)")
    p.add_argument("--max-len", dest="context", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   action=_Deprecated, new="--context")
    p.add_argument("--served-model-name", dest="served_model", default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   action=_Deprecated, new="--served-model")
    p.set_defaults(func=cmd_serve)
