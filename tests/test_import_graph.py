"""``lowering/`` (installed as ``optcompile.lowering``) imports nothing from the rest of optcompile.

The layers of DESIGN.md: rules -> lowering -> backends, data flowing downward only. Checked on
the source, so a function-level import counts as much as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

LOWERING = Path(__file__).resolve().parents[1] / "lowering"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


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
