"""The allowed subset of sympy in a rule, and hyper-parameter domains.

A rule's expressions may only use heads that the derivative table
(:mod:`optcompile.lowering.safe`) and the emitters know. Checking at declaration turns "this
fails somewhere in a backend" into an error that names the rule and the construct.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import sympy
import sympy.functions.elementary.piecewise  # explicit, so mypy sees the submodule below

from optcompile.lowering.errors import HyperparameterError, RuleError
from optcompile.lowering.safe import DERIVATIVES
from optcompile.lowering.trace import RuleIR

__all__ = ["check_rule", "Domain", "numbers_of", "parse_domain"]

_STRUCTURAL = (
    sympy.Symbol,
    sympy.Number,
    sympy.Add,
    sympy.Mul,
    sympy.Piecewise,
    sympy.functions.elementary.piecewise.ExprCondPair,
    sympy.core.relational.Relational,
    sympy.logic.boolalg.BooleanAtom,
    sympy.And,
    sympy.Or,
    sympy.Not,
    sympy.core.numbers.NumberSymbol,
)
_DIFFERENTIABLE = tuple(row.head for row in DERIVATIVES)


def check_rule(ir: RuleIR) -> None:
    """Raise :class:`RuleError` if ``ir`` uses a construct outside the supported subset."""
    for i, expr in enumerate(ir.outputs):
        for node in sympy.preorder_traversal(expr):
            if isinstance(node, sympy.Pow):
                _check_pow(ir.name, node)
            elif not isinstance(node, _STRUCTURAL + _DIFFERENTIABLE):
                head = type(node).__name__
                raise RuleError(
                    f"rule {ir.name}: output {i} uses {head} ({node}), which optcompile cannot "
                    f"lower. Supported: + - * / **, and optcompile.sym's sqrt, abs, sign, exp, "
                    f"log, maximum, minimum, where"
                )
            if isinstance(node, sympy.Number) and not node.is_finite:
                raise RuleError(f"rule {ir.name}: output {i} contains the constant {node}")


def _check_pow(name: str, node: sympy.Pow) -> None:
    exponent = node.exp
    if exponent.is_Number and not exponent.is_Integer:
        raise RuleError(
            f"rule {name}: fractional power {node}; write sym.sqrt(x) for x**0.5 (its "
            f"derivative at 0 is made safe), or use exp/log for other powers"
        )


@dataclass(frozen=True)
class Domain:
    """An interval of allowed values for a hyper-parameter, e.g. ``[0, 1)`` or ``>= 0``."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        if math.isnan(value):
            return False
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def validate(self, name: str, value: object) -> None:
        """Raise :class:`HyperparameterError` unless ``value`` is a real number in the domain.

        Tensors are checked by value, every task's value for one batched by ``vmap``;
        schedules are not checked.
        """
        values = numbers_of(value)
        if values is not None and not all(self.contains(v) for v in values):
            raise HyperparameterError(name, value, self.text)


def numbers_of(value: object) -> list[float] | None:
    """The value(s) of a number or one-element tensor; None for anything else (a schedule).

    A tensor wrapped by ``torch.func`` transforms is read through its wrappers: under ``vmap``
    a per-task hyper-parameter is one number per task, all of which are returned.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return [float(value)]
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        return None
    from optcompile.lowering.transforms import unwrapped

    return [float(v) for v in unwrapped(value).detach().flatten().tolist()]


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*$")
_HALF_LINE = re.compile(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$")


def parse_domain(text: str) -> Domain:
    """Parse ``"[0, 1)"``, ``"(0, inf)"``, ``">= 0"``, ``"> 0"`` or ``"any"``.

    Raises:
        RuleError: the text is none of those forms.
    """
    if text.strip() == "any":
        return Domain(-math.inf, math.inf, False, False, "any real number")
    if m := _INTERVAL.match(text):
        low, high = float(m.group(2)), float(m.group(3))
        return Domain(low, high, m.group(1) == "[", m.group(4) == "]", text.strip())
    if m := _HALF_LINE.match(text):
        op, bound = m.group(1), float(m.group(2))
        if op.startswith(">"):
            return Domain(bound, math.inf, op == ">=", False, f"{op} {m.group(2)}")
        return Domain(-math.inf, bound, False, op == "<=", f"{op} {m.group(2)}")
    raise RuleError(f"domain {text!r} is not understood; use e.g. '[0, 1)', '>= 0', 'any'")
