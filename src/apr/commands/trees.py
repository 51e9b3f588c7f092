"""Thread trees for the terminal: a runtime record's threads, or a solver's trace."""

from __future__ import annotations

from rich.tree import Tree

from apr.protocol import Thread
from apr.records import Record


def record_tree(rec: Record) -> Tree:
    """The threads of a runtime record, one line each: first prompt line, tokens, context,
    decode steps, status, and whether the thread reached the goal."""

    def label(t: Thread) -> str:
        first = t.prompt.split("\n")[0]
        status = {"done": "[green]done[/]", "cut": "[red]cut[/]", "failed": "[red]failed[/]"}.get(t.status, t.status)
        won = " [bold green]goal[/]" if t.text().count("equal: Goal Reached") >= 2 else ""
        forced = f" ({t.forced_tokens} forced)" if t.forced_spans is not None else ""  # exact arithmetic
        return (f"{first}  [dim]{t.tokens} tokens{forced}, context {t.context_tokens}, "
                f"steps {t.start_step}-{t.end_step}[/] {status}{won}")

    def add(node: Tree, t: Thread) -> None:
        for g in t.children:
            for c in g:
                add(node.add(label(c)), c)

    threads = Thread.from_json(rec.threads)
    root = Tree(label(threads))
    add(root, threads)
    return root


def solver_tree(thread: Thread, label: str, tree: Tree | None = None) -> Tree:
    """A solver trace's thread and its children, one line per thread."""
    first = thread.prompt.strip().splitlines()[0] if thread.prompt.strip() else "(empty prompt)"
    text = thread.text()
    outcome = "[green]goal reached[/]" if text.count("Goal Reached\n") >= 2 else "[red]no solution[/]"
    node = (tree.add if tree else Tree)(f"{label}: {first} ({len(text)} chars, {outcome})")
    for g, group in enumerate(thread.children):
        for i, child in enumerate(group):
            solver_tree(child, f"child {g}.{i}", node)
    return node
