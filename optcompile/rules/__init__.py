"""The built-in rules: one file per algorithm, each the single place its maths is written.

Each file declares its rules (``@rule``) and the optimizers built from them
(``@optimizer``, see :mod:`optcompile.registry`). The files are found by listing this package:
adding an algorithm is adding a file. :func:`registry` lists the rules, so that conformance tests
(and anyone else) can iterate over every rule without a hand-kept list.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from optcompile.rule import Rule

__all__ = ["registry", "load_all"]

# Listed first, in this order (the order of TorchOpt's aliases); the others follow by name.
_FIRST = ("basic", "sgd", "adam", "rms")


def _module_names() -> list[str]:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [n for n in _FIRST if n in found] + [n for n in found if n not in _FIRST]


def load_all() -> list[ModuleType]:
    """Import every rule file of this package (each registers its optimizers on import)."""
    return [importlib.import_module(f"{__name__}.{name}") for name in _module_names()]


def registry() -> dict[str, Rule]:
    """Every built-in rule by name, in module order."""
    rules: dict[str, Rule] = {}
    for module in load_all():
        for public in module.__all__:
            value = getattr(module, public)
            if isinstance(value, Rule):
                rules[value.name] = value
    return rules
