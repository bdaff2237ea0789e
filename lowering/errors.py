"""The exceptions optcompile raises, so that users can catch them by kind.

Every message says what is wrong, where, and how to fix it. They live in ``lowering/`` because
the lowering stages raise them and ``lowering/`` imports nothing from the rest of
``optcompile``; users import them from :mod:`optcompile.errors` (or ``optcompile``), which is
also the module their tracebacks and pickles name.
"""

from __future__ import annotations

__all__ = [
    "OptCompileError",
    "RuleError",
    "HyperparameterError",
    "LoweringError",
    "InternalError",
]


class OptCompileError(Exception):
    """Base class of every error optcompile raises on purpose."""


class RuleError(OptCompileError, TypeError):
    """A rule declaration is malformed (raised when the rule is declared)."""


class HyperparameterError(OptCompileError, ValueError):
    """A hyper-parameter value is outside its domain (raised at construction).

    Args:
        name: the argument's name as the user spelled it, e.g. ``"betas[0]"``.
        value: the offending value.
        domain: the allowed domain in words, e.g. ``"[0, 1)"``.
    """

    def __init__(self, name: str, value: object, domain: str) -> None:
        self.name, self.value, self.domain = name, value, domain
        super().__init__(f"{name}={value!r} is outside its domain: expected {domain}")


class LoweringError(OptCompileError, RuntimeError):
    """Code cannot be lowered as asked: ``@optcompile`` cannot trace a step as one graph.

    The message names the function, the construct that stopped the trace, and what to change.
    """


class InternalError(OptCompileError, RuntimeError):
    """optcompile itself is wrong: the message carries what is needed for a bug report."""


for _error in (OptCompileError, RuleError, HyperparameterError, LoweringError, InternalError):
    _error.__module__ = "optcompile.errors"
