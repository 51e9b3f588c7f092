"""Tokenizing demonstrations for supervised training: batched (Rust backend, numpy masks)
against one string at a time (the tokenizer's Python call with offsets), same output.

    python benchmarks/bench_tokenize.py [--problems 400] [--num-count 4] [--repeats 3]

Draws problems, writes their APR demonstrations (with `Sub Call Budget` prefixes, join
text masked as in training), then times `apr.train.packing.encode_many` both ways, interleaved,
and prints tokens/s (medians), the ratio and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_solvers import machine

from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.search import AprConfig
from apr.tokenizer import build_tokenizer
from apr.train import packing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=400)
    ap.add_argument("--num-count", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    tok = build_tokenizer()
    task = TaskConfig(num_count=args.num_count)
    records = [("bench", i, demonstration(p, i, 0, AprConfig())) for i, p in enumerate(generate(args.problems, seed=11, task=task))]
    strings = [s for d in packing.demonstrations(records, tok, budget_prefix=True) for s in d.strings]
    fast = packing.encode_many(strings, tok)
    slow = packing.encode_many(strings, tok, batched=False)
    assert all(a.tolist() == b.tolist() and m.tolist() == n.tolist() for (a, m), (b, n) in zip(fast, slow)), "outputs differ"
    n_tokens = sum(len(ids) for ids, _ in fast)

    times = {"batched": [], "one at a time": []}
    for _ in range(args.repeats):
        for name, batched in (("batched", True), ("one at a time", False)):
            t0 = time.perf_counter()
            packing.encode_many(strings, tok, batched=batched)
            times[name].append(time.perf_counter() - t0)
    rates = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    print(f"machine: {machine()}")
    print(f"{args.problems} Countdown-{args.num_count} APR demonstrations: {len(strings)} strings, {n_tokens:,} tokens; "
          f"medians of {args.repeats}")
    for k, r in rates.items():
        print(f"  {k:>14}: {r:>12,.0f} tokens/s")
    print(f"  ratio batched / one at a time: {rates['batched'] / rates['one at a time']:.2f}")


if __name__ == "__main__":
    main()
