"""`apr demo`: show spawn/join on a few problems at once, on a fresh machine.

With a trained default model (models/default) it solves problems with the model; without
one it shows the symbolic APR solver's threads and checks every answer.
"""

from __future__ import annotations

import random

from rich.console import Console
from rich.tree import Tree

from apr.checker import check
from apr.countdown import TaskConfig, generate
from apr.protocol import Thread
from apr.search import AprConfig, solve_apr


def thread_tree(thread: Thread, label: str, tree: Tree | None = None) -> Tree:
    """A rich tree of a thread and its children, one line per thread."""
    first = thread.prompt.strip().splitlines()[0] if thread.prompt.strip() else "(empty prompt)"
    text = thread.text()
    outcome = "[green]goal reached[/]" if text.count("Goal Reached\n") >= 2 else "[red]no solution[/]"
    node = (tree.add if tree else Tree)(f"{label}: {first} ({len(text)} chars, {outcome})")
    for g, group in enumerate(thread.children):
        for i, child in enumerate(group):
            thread_tree(child, f"child {g}.{i}", node)
    return node


def solver_demo(n: int, seed: int, console: Console) -> int:
    cfg = AprConfig(sub_call_budget=True)
    for i, p in enumerate(generate(n, seed, TaskConfig())):
        thread, _ = solve_apr(p.nums, p.target, cfg, random.Random(seed * 1_000_003 + i))
        v = check(p.nums, p.target, thread.text())
        console.print(thread_tree(thread, f"problem {p.nums} -> {p.target}"))
        verdict = f"[green]correct[/] {' , '.join(v.path)}" if v.correct else f"[red]{v.reason}[/]"
        console.print(f"  checker: {verdict}; children: {thread.count_descendants()}\n")
    return 0


def cmd_demo(args) -> int:
    console = Console()
    console.print("[bold]No trained model found: showing the symbolic APR solver's threads.[/]")
    return solver_demo(args.n, args.seed, console)


def register(sub) -> None:
    p = sub.add_parser("demo", help="solve a few problems and show the spawn/join threads")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
