"""`apr serve --model DIR`: an OpenAI-compatible completions server (see `apr.serve`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import apr.serve
from apr.serve import start_server


def cmd_serve(args) -> int:
    from apr.engine.local import LocalEngine

    model = Path(args.model)
    engine = LocalEngine(model, max_slots=args.max_slots, max_len=args.max_len, device=args.device, dtype=args.dtype)
    name = args.served_model_name or model.resolve().name
    httpd, worker = start_server(engine, args.host, args.port, name, args.max_len)
    host, port = httpd.server_address[:2]
    print(f"apr serve: {name} on http://{host}:{port}/v1 ({engine.device}, {args.max_slots} slots)",
          file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        worker.close()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible completions API",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=apr.serve.__doc__)
    p.add_argument("--model", required=True, help="Hugging Face Llama model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-slots", type=int, default=64, help="sequences decoded together (KV-cache slots)")
    p.add_argument("--max-len", type=int, default=4096, help="tokens per sequence (prompt + generated)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--served-model-name", default=None)
    p.set_defaults(func=cmd_serve)
