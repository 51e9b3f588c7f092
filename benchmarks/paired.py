"""Two `apr eval` runs of the same problems compared problem by problem (the CPU ledger's
paired figures, docs/reports/cpu_runs.md):

    python benchmarks/paired.py BEFORE_RUN AFTER_RUN [--window 512]

prints the accuracy of each, the change with a paired bootstrap 95% interval (10,000
resamples, `apr.report_rl.paired_change`) and the problems each solved that the other did
not. `--window`: a problem counts when solved with its longest thread inside the window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from apr.errors import UserError
from apr.report_rl import paired_change


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--window", type=int, default=None, help="count a problem only within this many tokens")
    args = ap.parse_args(argv)
    for d in (args.before, args.after):
        if not (d / "records.jsonl").is_file():
            ap.error(f"{d}: no records.jsonl (an `apr eval` run folder)")
    if args.window is not None and args.window < 1:
        ap.error("--window must be 1 or more")
    try:
        c = paired_change(args.before, args.after, window=args.window)
    except UserError as e:
        ap.error(str(e))
    at = f" within {args.window} tokens" if args.window else ""
    print(f"{args.after} vs {args.before}{at}: {100 * c['after']:.1f}% vs {100 * c['before']:.1f}%, "
          f"{100 * c['change']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] points "
          f"({c['problems']} problems, +{c['gained']} / -{c['lost']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
