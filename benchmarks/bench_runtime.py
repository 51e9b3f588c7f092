"""Runtime overhead: the spawn/join orchestration against the engine it drives.

    python benchmarks/bench_runtime.py --model DIR [--problems FILE] [--limit 32] [--device auto]

1. Runs the problems through `Runtime` (method from the model, greedy) and splits the wall
   time into time inside `engine.poll` and everything else (parsing spawn blocks, joins,
   tokenizing contexts, checking, records): the orchestration overhead.
2. Replays the same work without orchestration: every completion the runtime asked for is
   sent to a fresh engine as an independent request (same context, max_tokens = the tokens
   it generated, same seed), all at once, and timed.
Prints generated tokens/s of both, the overhead share and the machine. Without --model a
random tiny model is used (it never spawns, so only the serial path is measured).

`--arithmetic exact` runs the runtime with exact arithmetic (issue 20); `--arithmetic both`
instead runs the unassisted and the exact runtime alternately (`--repeats` times each, a
fresh engine per run) and compares the time inside `engine.poll` per generated token (the
two modes generate different texts), with the forced share and the accuracy of each:

    python benchmarks/bench_runtime.py --model models/default --limit 32 --arithmetic both --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import torch


def machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    return f"{model} ({os.cpu_count()} cores)"


def random_model(path: str) -> str:
    from apr.model_folder import ModelInfo, make_model, save_model
    from apr.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    save_model(make_model("tiny", tok), tok, ModelInfo(method="apr", preset="tiny"), path)
    return path


def main() -> None:
    from apr.countdown import read_problems
    from apr.datasets import packaged_validation_set
    from apr.engine import EngineSpec, Request, SamplingParams, make_engine
    from apr.device import resolve_device
    from apr.model_folder import load_model_info
    from apr.protocol import Thread
    from apr.runtime import Runtime, RuntimeConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--problems", default=str(packaged_validation_set()))
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-new", type=int, default=None, help="cap tokens per thread (a random model never stops)")
    ap.add_argument("--arithmetic", choices=["model", "exact", "both"], default="model",
                    help="exact arithmetic (issue 20); both: unassisted vs exact side by side")
    ap.add_argument("--repeats", type=int, default=3, help="--arithmetic both: runs of each mode")
    args = ap.parse_args()
    model = args.model or random_model("/tmp/apr_bench_random_tiny")
    info = load_model_info(model)
    context = args.context if args.model else min(args.context, 300)
    problems = read_problems(args.problems)[: args.limit]
    device = str(resolve_device(args.device))
    cfg = RuntimeConfig(context=context, max_in_flight=args.slots, child_budget=10 if info.budget_prefix else None,
                        arithmetic="model" if args.arithmetic == "both" else args.arithmetic).resolve(info)

    def engine():
        return make_engine(EngineSpec(model=model, device=device, max_slots=args.slots, context=context))

    # warm-up (allocations, kernels) on a few problems
    with engine() as e:
        Runtime(e, cfg).run(list(enumerate(problems[:2])))
    if args.arithmetic == "both":
        return compare_arithmetic(engine, cfg, problems, args.repeats, f"{machine(device)}; model: {model} ({info.method})")

    with engine() as e:
        rt = Runtime(e, cfg)
        t = time.perf_counter()
        recs = rt.run(list(enumerate(problems)))
        wall = time.perf_counter() - t
    tokens = sum(r.total_tokens for r in recs)
    # the same completions, without orchestration
    reqs = [(ctx, seg) for r in recs for th in Thread.from_json(r.threads).walk()
            for ctx, seg in zip(th.contexts(), th.segments)]
    with engine() as e:
        tok = e.tokenizer
        batch = [Request(str(i), ctx, max(1, len(tok.encode(seg, add_special_tokens=False))), [], SamplingParams(),
                         arithmetic=cfg.arithmetic) for i, (ctx, seg) in enumerate(reqs)]
        t = time.perf_counter()
        outs = e.run(batch)
        plain = time.perf_counter() - t
    plain_tokens = sum(c.n_tokens for c in outs)
    print(f"machine: {machine(device)}; model: {model} ({info.method}); problems: {len(problems)}; slots: {args.slots}")
    print(f"runtime:  {tokens} tokens in {wall:.2f} s = {tokens / wall:,.0f} tok/s; "
          f"inside engine.poll {rt.engine_seconds:.2f} s; orchestration {wall - rt.engine_seconds:.2f} s "
          f"({(wall - rt.engine_seconds) / rt.engine_seconds:.1%} of engine time)")
    print(f"engine alone, same completions as independent requests: {plain_tokens} tokens in {plain:.2f} s = {plain_tokens / plain:,.0f} tok/s")
    print(f"children per problem: {sum(r.children for r in recs) / len(recs):.2f}; accuracy {sum(r.correct for r in recs) / len(recs):.3f}")


def compare_arithmetic(engine, cfg, problems, repeats: int, header: str) -> None:
    """Unassisted and exact arithmetic alternately: engine time per generated token."""
    from apr.competence import measure
    from apr.runtime import Runtime

    runs: dict[str, list[dict]] = {"model": [], "exact": []}
    for _ in range(repeats):
        for mode in runs:
            with engine() as e:
                rt = Runtime(e, dataclasses.replace(cfg, arithmetic=mode))
                t = time.perf_counter()
                recs = rt.run(list(enumerate(problems)))
                wall = time.perf_counter() - t
            tokens = sum(r.total_tokens for r in recs)
            comp = measure(recs)
            runs[mode].append({"wall": wall, "engine": rt.engine_seconds, "tokens": tokens,
                               "forced": sum(r.forced_tokens or 0 for r in recs),
                               "accuracy": sum(r.correct for r in recs) / len(recs),
                               "op_errors": comp["arithmetic_error_rate"]})
    print(f"machine: {header}; problems: {len(problems)}; repeats: {repeats} (medians)")
    per_tok = {}
    for mode, rs in runs.items():
        per_tok[mode] = statistics.median(r["engine"] / max(r["tokens"], 1) for r in rs)
        r = rs[0]
        print(f"{mode:>5}: {per_tok[mode] * 1e3:.3f} ms inside engine.poll per generated token "
              f"(wall {statistics.median(x['wall'] for x in rs):.2f} s); tokens {r['tokens']}, forced {r['forced']} "
              f"({r['forced'] / max(r['tokens'], 1):.1%}); accuracy {r['accuracy']:.3f}; arithmetic error rate {r['op_errors']:.3f}")
    print(f"exact / model, engine time per generated token: {per_tok['exact'] / per_tok['model']:.3f}")


if __name__ == "__main__":
    main()
