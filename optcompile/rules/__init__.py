"""The built-in rules: one file per algorithm, each the single place its maths is written.

:func:`registry` lists them, so that conformance tests (and anyone else) can iterate over every
rule without a hand-kept list.
"""

from __future__ import annotations

import importlib

from optcompile.rule import Rule

__all__ = ["registry"]

_MODULES = ("basic", "sgd", "adam", "rms")


def registry() -> dict[str, Rule]:
    """Every built-in rule by name, in module order."""
    rules: dict[str, Rule] = {}
    for name in _MODULES:
        module = importlib.import_module(f"optcompile.rules.{name}")
        for public in module.__all__:
            value = getattr(module, public)
            if isinstance(value, Rule):
                rules[value.name] = value
    return rules
