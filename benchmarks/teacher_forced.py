"""Teacher-forced arithmetic of model folders on held-out demonstrations, side by side:

    python benchmarks/teacher_forced.py --traces FILE MODEL [MODEL ...] [--limit N]

FILE: demonstrations (`apr data traces`) of problems none of the models trained on, of each
model's method. Each model reads them as it was trained (its own budget prefix, every
thread's training strings); each text is scored once (a later segment's string repeats the
earlier segment's text: read, not scored again) and never on the join text the runtime
inserted (not trained). `apr.train.teacher_forced.measure` counts a result right only when
every token of it is the model's greedy choice given the true text before. Printed per model: loss per character, the share of results wrong, by the result's
digits, for products, and first-time vs copied (docs/reports/cpu_runs.md, session 7).
`--table N`: also N products a*b of two-digit numbers drawn at random (seeded), each scored
alone as a line `Exploring Operation: a*b=c` (the multiplication table, out of any trace).
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

from apr.errors import UserError

COLUMNS = ("all", "digits:1", "digits:2", "digits:3", "digits:4+", "op:*", "first", "copied")


def pct(rates: dict, key: str) -> str:
    r = rates.get(key)
    return f"{100 * r['error']:.1f} ({r['n']})" if r else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+", help="model folders")
    ap.add_argument("--traces", type=Path, required=True, help="held-out demonstrations (JSONL)")
    ap.add_argument("--limit", type=int, default=200, help="first N demonstrations (default: 200)")
    ap.add_argument("--table", type=int, default=0, help="also N random two-digit products, alone (default: 0)")
    args = ap.parse_args(argv)
    if args.limit < 1 or args.table < 0:
        ap.error("--limit must be 1 or more, --table 0 or more")
    for m in args.models:
        if not (m / "apr.json").is_file():
            ap.error(f"{m}: not a model folder (no apr.json)")
    import torch

    from apr.model_folder import load_model, load_model_info
    from apr.train import packing
    from apr.train.teacher_forced import measure

    torch.set_num_threads(1)
    try:
        records = packing.read_demonstrations(args.traces)[: args.limit]
    except UserError as e:
        ap.error(str(e))
    print(f"{len(records)} demonstrations of {args.traces}; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, one thread")
    rng = random.Random(0)
    table = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(args.table)]
    table_lines = [f"Exploring Operation: {a}*{b}={a * b}\n" for a, b in table]
    extra = " table 3 digits | table 4 digits |" if table else ""
    print(f"| model | loss/char | results wrong % (n) | 1 digit | 2 | 3 | 4+ | products | first-time | copied |{extra} s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * bool(table))
    for m in args.models:
        info = load_model_info(m)
        model, tok, _ = load_model(m)
        t0 = time.perf_counter()
        demos = packing.demonstrations(records, tok, budget_prefix=info.budget_prefix)
        if any(d.method != info.method for d in demos):
            ap.error(f"{args.traces}: demonstrations of another method than {m}'s ({info.method})")
        strings = [ts for d in demos for ts in d.strings]
        # each text scored once (not again in a later segment's string), never join text
        r = measure(model, tok, [ts.text for ts in strings], [[(0, ts.new_from), *ts.inserted] for ts in strings])
        cells = " | ".join(pct(r["results"], k) for k in COLUMNS)
        if table:
            t = measure(model, tok, table_lines)["results"]
            cells += f" | {pct(t, 'digits:3')} | {pct(t, 'digits:4+')}"
        print(f"| {m} ({info.preset}) | {r['loss_per_char']:.4f} | {cells} | {time.perf_counter() - t0:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
