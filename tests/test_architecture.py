"""The layering the README describes: the library never imports the command line (argparse
or apr.commands), modules import each other without cycles, and callers use the engine
interface instead of probing engines for methods."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "apr"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# What only the command line may import: option parsing and the command modules.
COMMAND_LINE = ("argparse", "apr.commands")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from apr import protocol`
    return names


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {n for n in imports(p) if n in files and n != m} for m, p in files.items()}


def command_line_imports(path: Path) -> list[str]:
    return sorted(n for n in imports(path) if any(n == c or n.startswith(c + ".") for c in COMMAND_LINE))


def test_the_library_never_imports_the_command_line():
    for p in PKG.rglob("*.py"):
        m = module_name(p)
        if m.startswith("apr.commands") or m == "apr.__main__":
            continue
        assert not command_line_imports(p), f"{m} imports the command line: {command_line_imports(p)}"


def test_the_command_line_check_sees_every_form_of_import(tmp_path):
    for line in ("import argparse", "from argparse import Namespace", "from apr.commands import main",
                 "from apr import commands", "import apr.commands.options as o", "def f():\n    import argparse"):
        f = tmp_path / "m.py"
        f.write_text(line + "\n")
        assert command_line_imports(f), line
    (tmp_path / "m.py").write_text("from apr import protocol\nimport argparsing\n")
    assert command_line_imports(tmp_path / "m.py") == []


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path[path.index(d):] + [d]) if d in path else d
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])


def test_no_module_probes_an_engine_for_methods():
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr"):
                target = ast.unparse(node.args[0]) if node.args else ""
                assert "engine" not in target and "eng" != target, f"{p.name}: {ast.unparse(node)}"
