"""`apr report RUN_DIR... --out DIR`: plots and tables from `apr eval` run folders, or with
`--rl` from `apr train rl` folders. Reads the folders; writes only under --out."""

from __future__ import annotations

import sys
from pathlib import Path

from apr.commands.options import dir_pair
from apr.errors import UserError
from apr.io import check_output_dir


def cmd_report(args) -> int:
    if args.paired and not args.rl:
        raise UserError("--paired needs --rl")
    # The run folders are only read: --out may be none of them (nor a file).
    check_output_dir(args.out, {"RUN_DIR": args.runs, "paired": [d for pair in args.paired or [] for d in pair]})
    if args.rl:
        from apr.report_rl import write_rl_report

        path = write_rl_report(args.runs, Path(args.out), args.paired or [])
        print(f"wrote {path} and rl_curve.png", file=sys.stderr)
        return 0
    from apr.report import write_report

    path = write_report(args.runs, Path(args.out))
    print(f"wrote {path} and plots", file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="plots and a markdown report from run folders",
                       description="Plots and a markdown report from `apr eval` run folders (or, with --rl, from "
                       "`apr train rl` folders). Reads the folders; writes only under --out.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="`apr eval` run folders (with --rl: `apr train rl` ones)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and the plots")
    p.add_argument("--rl", action="store_true", help="the folders are `apr train rl` runs: curve and before/after table")
    p.add_argument("--paired", action="append", type=dir_pair, metavar="BEFORE,AFTER",
                   help="with --rl: two `apr eval` folders on the same problems (before and after RL); repeatable")
    p.set_defaults(func=cmd_report)
