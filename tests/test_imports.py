"""The package's import graph has no cycle, so any module can be imported first and each layer depends only on the
ones below it; and the rooms of the house (the package's top-level modules and subpackages) import each other
in one direction only: no arrow runs back up.

Every import counts, wherever it stands (module level, inside a function, under ``TYPE_CHECKING``), and so does
a runtime import by name (``importlib.import_module("fgvc.methods")``). Importing ``fgvc.a.b`` from outside
``fgvc.a`` also runs ``fgvc/a/__init__.py`` first, which is an edge of its own: the cycle through a registry that
imports ``fgvc.methods.base`` while every method imports the registry is one of those.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fgvc"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_import_names(node: ast.AST) -> list[str]:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")`` with a literal name."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return []
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
        return [node.args[0].value]
    return []


def resolve(target: str, modules: set[str]) -> str:
    """The deepest module of the package that ``target`` names ('' for anything outside it)."""
    while target and target not in modules:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules its execution imports (parent packages included)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                targets = runtime_import_names(node)
            for target in targets:
                found = resolve(target, modules)
                if not found:
                    continue
                # fgvc.a.b from outside fgvc.a runs fgvc/a/__init__.py too (inside it, that package is running)
                parts = found.split(".")
                for depth in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:depth])
                    inside = name == ancestor or name.startswith(ancestor + ".")
                    if ancestor in modules and ancestor != name and (ancestor == found or not inside):
                        graph[name].add(ancestor)
    return graph


def room(module: str) -> str:
    """The room of a module: ``fgvc`` itself, or its top-level module or subpackage (``fgvc.engine``)."""
    return ".".join(module.split(".")[:2])


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {}
    for module, targets in graph.items():
        here = room(module)
        rooms.setdefault(here, set()).update(room(t) for t in targets if room(t) != here)
    return rooms


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_room_imports_a_room_that_imports_it_back():
    cycle = find_cycle(room_graph(import_graph()))
    assert not cycle, "rooms in a circle (an arrow back up): " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_runtime_imports_and_package_initializers(tmp_path, monkeypatch):
    # the shape of the old registry: methods/__init__ imports a method, the method imports the registry, and the
    # registry imports methods.base inside a function and fgvc.methods by name: two cycles the graph must see
    package = tmp_path / "fgvc"
    (package / "methods").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "methods" / "__init__.py").write_text("from . import baseline\n")
    (package / "methods" / "base.py").write_text("")
    (package / "methods" / "baseline.py").write_text("from ..registry import register\nfrom .base import x\n")
    (package / "registry.py").write_text("import importlib\n\ndef load():\n    from .methods.base import Method\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    graph = import_graph()
    assert "fgvc.methods" in graph["fgvc.registry"]  # the package's __init__ runs before its base module
    assert find_cycle(graph)
    (package / "registry.py").write_text("def load():\n    import importlib\n    importlib.import_module('fgvc.methods')\n")
    assert "fgvc.methods" in import_graph()["fgvc.registry"]
    (package / "registry.py").write_text("")
    assert not find_cycle(import_graph())
    assert "fgvc.methods" not in import_graph()["fgvc.methods.baseline"]  # inside a package, its __init__ runs already


def test_the_package_top_holds_at_most_18_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 18, top
