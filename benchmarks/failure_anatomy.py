"""Where a Countdown-3 model's search goes wrong beside its demonstrator's (issue 17).

    python benchmarks/failure_anatomy.py apr RUN_DIR [--budget 3]      # an `apr eval` run of an APR model
    python benchmarks/failure_anatomy.py swap MODEL TRACES [--n 150]   # does a SoS+ model read the id it wrote?

`apr`: for each problem of the run, the nodes the model's root generated before spawning
(distinct, and whether one of them leads to the target in one more operation), beside the
demonstrator's: the APR solver with its root beam fixed at the budget (the nodes a
`Sub Call Budget: N` demonstration spawns: the heuristic's best N), run on the same
problems. A problem the model fails with no winning node among its own is lost by the
root's choice; with one, by its children (arithmetic, false claims).

`swap`: teacher-forced on demonstrations (`apr data traces` records): the trace up to its
first `Moving to Node #X`, then once with X and once with another node Y the trace
generated; the model writes the `Current State` line greedily. A model that reads the id
copies Y's state when asked for Y; one that copies the best node whatever id it wrote
copies X's again.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from apr import protocol
from apr.countdown import expand
from apr.search.apr import AprConfig, solve_apr

_GEN = re.compile(r"^Generated Node #0,\d+: \d+:\[([^\]]*)\]", re.M)


def one_step(nums: tuple[int, ...], target: int) -> bool:
    """Two numbers that reach the target with one operation."""
    return len(nums) == 2 and any(out == [target] for _, out in expand(list(nums)))


def root_nodes(threads: dict) -> list[tuple[int, ...]]:
    """The numbers of the nodes an APR root generated before its first spawn (or its end)."""
    text = threads["text"].split("<Calling Sub Searches>")[0].split("<Sub Searches>")[0]
    return [tuple(sorted(int(x) for x in m[1].split(",") if x.strip())) for m in _GEN.finditer(text)]


def apr_anatomy(run: Path, budget: int) -> dict:
    recs = [json.loads(line) for line in open(run / "records.jsonl")]
    cfg = AprConfig(beam_min=budget, beam_max=budget, spawn_prob=1.0)
    c: Counter = Counter()
    for i, r in enumerate(recs):
        nodes = root_nodes(r["threads"]) if r.get("threads") else []
        valid = {tuple(sorted(out)) for _, out in expand(r["nums"])}
        mine = {n for n in nodes if n in valid}
        thread, solved = solve_apr(r["nums"], r["target"], cfg, random.Random(i))
        demo = {tuple(sorted(int(x) for x in m[1].split(","))) for m in _GEN.finditer(thread.segments[0])}
        c["problems"] += 1
        c["model solved"] += bool(r["correct"])
        c["demonstrator solved"] += solved
        c["model: fewer distinct nodes than the budget"] += len(set(nodes)) < budget
        c["model: a node not among the successors"] += any(n not in valid for n in nodes)
        c["demonstrator: a winning node among its own"] += any(one_step(n, r["target"]) for n in demo)
        win = any(one_step(n, r["target"]) for n in mine)
        c["model: a winning node among its own"] += win
        if not r["correct"]:
            c["failed, no winning node (the root's choice)" if not win else "failed with a winning node (the children)"] += 1
    return dict(c)


def swap_probe(model: str, traces: Path, n: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    tok = AutoTokenizer.from_pretrained(model)
    rng, c = random.Random(0), Counter()
    for line in open(traces):
        if c["probes"] >= n:
            break
        text = json.loads(line)["search_path"]
        moves = protocol.node_moves(text)
        if not moves:
            continue
        mv = moves[0]
        others = [k for k, s in mv.generated.items() if k != mv.node and s.nums != mv.named.nums]
        if not others:
            continue
        other = rng.choice(others)
        c["probes"] += 1
        for kind, node in (("named as demonstrated", mv.node), ("named another", other)):
            ids = tok(text[: mv.at] + protocol.moving_line(node) + "Current State: ")["input_ids"]
            with torch.no_grad():
                out = lm.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
            wrote = tok.decode(out[0, len(ids):]).split("\n")[0]
            state = lambda s: f"{s.target}:{protocol.fmt_list(s.nums)}, Operations: {protocol.fmt_ops(s.ops)}"  # noqa: E731
            c[f"{kind}: copies that node"] += wrote == state(mv.generated[node])
            if kind == "named another":
                c["named another: copies the demonstrated node"] += wrote == state(mv.named)
    return dict(c)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("apr")
    a.add_argument("run", type=Path)
    a.add_argument("--budget", type=int, default=3)
    s = sub.add_parser("swap")
    s.add_argument("model")
    s.add_argument("traces", type=Path)
    s.add_argument("--n", type=int, default=150)
    args = ap.parse_args(argv)
    # checked before any model loads: one line, exit 2
    if args.what == "apr" and not (args.run / "records.jsonl").is_file():
        ap.error(f"{args.run}: no records.jsonl (an `apr eval` run folder of an APR model)")
    if args.what == "swap" and not (Path(args.model, "apr.json").is_file() and args.traces.is_file()):
        ap.error(f"{args.model}: no model folder, or {args.traces}: no such file")
    out = apr_anatomy(args.run, args.budget) if args.what == "apr" else swap_probe(args.model, args.traces, args.n)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
