"""The exceptions optcompile raises (defined in :mod:`optcompile.lowering.errors`)."""

from optcompile.lowering.errors import (
    HyperparameterError,
    InternalError,
    LoweringError,
    OptCompileError,
    RuleError,
)

__all__ = [
    "OptCompileError",
    "RuleError",
    "HyperparameterError",
    "LoweringError",
    "InternalError",
]
