"""Throughput of the problem generator and the symbolic solvers, one process and with workers.

    python benchmarks/bench_solvers.py [--n 4000] [--workers 2] [--repeats 3]

Prints problems/s and traces/s (medians over repeats) and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from apr.countdown import generate
from apr.datasets import demonstrations
from apr.search import AprConfig, SosConfig


def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor()} ({os.cpu_count()} cores), Python {platform.python_version()}"


def rate(fn, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    problems = list(generate(args.n, seed=123))
    print(f"{'what':<28}{'1 process':>14}{f'{args.workers} workers':>14}{'ratio':>8}")
    rows = [
        ("generator (problems/s)", lambda w: (lambda: sum(1 for _ in generate(args.n, seed=5, workers=w)))),
        ("APR solver (traces/s)", lambda w: (lambda: sum(1 for _ in demonstrations(iter(problems), 0, AprConfig(), w)))),
        ("SoS+ solver (traces/s)", lambda w: (lambda: sum(1 for _ in demonstrations(iter(problems), 0, SosConfig(), w)))),
    ]
    best = {}
    for name, make in rows:
        one = rate(make(1), args.n, args.repeats)
        many = rate(make(args.workers), args.n, args.repeats)
        best[name] = max(one, many)
        print(f"{name:<28}{one:>14.0f}{many:>14.0f}{many / one:>8.2f}")
    minutes = 500_000 / best["APR solver (traces/s)"] / 60
    print(f"500,000 APR demonstrations at the better of the two rates: about {minutes:.1f} minutes")


if __name__ == "__main__":
    main()
