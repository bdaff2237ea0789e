"""One-way imports: ``lowering/`` imports nothing from the rest of optcompile, and no two
modules of ``optcompile/`` import each other, directly or through others.

The layers of DESIGN.md: rules -> lowering -> backends, data flowing downward only. Checked on
the source, so a function-level import counts as much as a module-level one; only imports
under ``if TYPE_CHECKING:`` (annotations, never run) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOWERING = ROOT / "lowering"
PACKAGE = ROOT / "optcompile"


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each absolute import; ``from a import b`` gives ``a.b`` (a module or
    a name of ``a``: the graph resolves it to the longest module prefix)."""
    found = []
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """optcompile's modules (not lowering) and the optcompile modules each imports."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, imported in _imports(path):
            if imported.startswith("optcompile.lowering") or not imported.startswith("optcompile"):
                continue
            # The longest module prefix: `from optcompile.base import chain` -> optcompile.base.
            while imported not in modules and "." in imported:
                imported = imported.rpartition(".")[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)) is not None:
                return found
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_lowering_imports_only_lowering_from_optcompile():
    sources = sorted(LOWERING.rglob("*.py"))
    assert len(sources) > 15  # the walk found the package
    offending = [
        f"{path.relative_to(LOWERING.parent)}:{line} imports {module}"
        for path in sources
        for line, module in _imports(path)
        if (module == "optcompile" or module.startswith("optcompile."))
        and not (module == "optcompile.lowering" or module.startswith("optcompile.lowering."))
    ]
    assert offending == []


def test_the_errors_keep_their_public_module():
    import optcompile
    from optcompile.lowering import errors

    assert optcompile.HyperparameterError is errors.HyperparameterError
    assert optcompile.HyperparameterError.__module__ == "optcompile.errors"


def test_no_import_cycle_inside_optcompile():
    graph = _import_graph()
    assert len(graph) > 40 and "optcompile.fused" in graph["optcompile.rule"]  # the walk worked
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
