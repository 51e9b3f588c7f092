"""The layering the README describes: the library never imports the command line, modules
import each other without cycles, and callers use the engine interface instead of probing
engines for methods."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "apr"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every apr module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from apr import protocol`
    return {n for n in names if n == "apr" or n.startswith("apr.")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {n for n in imports(p) if n in files and n != m} for m, p in files.items()}


def test_the_library_never_imports_a_command_module():
    for m, deps in graph().items():
        if m.startswith("apr.commands") or m == "apr.__main__":
            continue
        assert not [d for d in deps if d.startswith("apr.commands")], f"{m} imports the command line"


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
