"""Options shared by the commands that run a model, and the typed values they become."""

from __future__ import annotations

import argparse

from apr.engine.spec import EngineSpec
from apr.runtime import RuntimeOptions


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (local engine; with --server: where the tokenizer is)")
    p.add_argument("--server", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--served-model", help="model name to ask the server for")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-slots", type=int, default=64, help="local engine: sequences decoded together")


def engine_spec(args: argparse.Namespace) -> EngineSpec:
    return EngineSpec(model=args.model, server=args.server, served_model=args.served_model, device=args.device,
                      dtype=args.dtype, max_slots=args.max_slots, context=args.context)


def add_runtime_options(p: argparse.ArgumentParser, method: bool = True, temperature_help: str = "") -> None:
    """Runtime limits, budgets and sampling; `method=False` for commands with their own --method."""
    if method:
        p.add_argument("--method", choices=["apr", "sos"], help="default: what the model was trained for")
    p.add_argument("--context", type=int, default=4096, help="tokens per thread; a thread reaching it fails its problem")
    p.add_argument("--max-children", type=int, default=16)
    p.add_argument("--max-depth", type=int, default=1)
    p.add_argument("--max-total-tokens", type=int, default=200_000)
    p.add_argument("--sub-call-budget", type=int, help="APR: `Sub Call Budget: N` (default 10 if the model was trained with it)")
    p.add_argument("--token-budget", type=int, help="SoS+: `Token Budget: N` (default 4096 if the model was trained with it)")
    if temperature_help:
        p.add_argument("--temperature", type=float, help=temperature_help)
    else:
        p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-in-flight", type=int, default=32, help="problems decoding at once")


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(
        method=args.method if args.method in ("apr", "sos") else None,  # eval's cons@N etc. pick their own
        context=args.context, max_children=args.max_children, max_depth=args.max_depth,
        max_total_tokens=args.max_total_tokens, sub_call_budget=args.sub_call_budget, token_budget=args.token_budget,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        max_in_flight=args.max_in_flight)
