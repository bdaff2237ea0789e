"""The functions a rule body may call on symbols (re-exported as :mod:`optcompile.sym`).

A rule body is plain arithmetic on sympy symbols. Besides ``+ - * / **`` it may call the
functions below. Each one builds a sympy expression whose derivative comes from the explicit
table in :mod:`optcompile.lowering.safe`, never from sympy's own rules (which would give
``1/(2*sqrt(0)) = zoo`` for sqrt, or ``DiracDelta`` for sign).

Examples:
    >>> from optcompile import sym
    >>> import sympy
    >>> x = sympy.Symbol("x", real=True)
    >>> sym.sqrt(x)
    sqrt(x)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy

if TYPE_CHECKING:
    # sympy.printing.latex is the latex() function at runtime, which hides the module.
    from sympy.printing.latex import LatexPrinter

__all__ = [
    "sqrt",
    "abs",
    "sign",
    "exp",
    "log",
    "maximum",
    "minimum",
    "where",
    "eq",
    "ne",
    "SafeSqrt",
    "SqrtGrad",
    "Sign",
    "Maximum",
    "Minimum",
    "MaxTieGrad",
]


class SafeSqrt(sympy.Function):
    """``sqrt(x)`` as an opaque head, so that only the safe table differentiates it."""

    nargs = 1
    is_real = True

    def _sympystr(self, printer: sympy.printing.StrPrinter) -> str:
        return f"sqrt({printer._print(self.args[0])})"

    def _latex(self, printer: LatexPrinter) -> str:
        return rf"\sqrt{{{printer._print(self.args[0])}}}"


class SqrtGrad(sympy.Function):
    r"""The safe derivative of sqrt: :math:`\frac{1}{2\sqrt{x}}` for :math:`x > 0`, else 0."""

    nargs = 1
    is_real = True

    def _sympystr(self, printer: sympy.printing.StrPrinter) -> str:
        x = printer._print(self.args[0])
        return f"where({x} > 0, 1/(2*sqrt({x})), 0)"

    def _latex(self, printer: LatexPrinter) -> str:
        x = printer._print(self.args[0])
        return rf"[{x} > 0]\,\frac{{1}}{{2\sqrt{{{x}}}}}"


class Sign(sympy.Function):
    """``sign(x)`` in {-1, 0, 1}; its derivative is 0 everywhere (see the safe table)."""

    nargs = 1
    is_real = True

    def _sympystr(self, printer: sympy.printing.StrPrinter) -> str:
        return f"sign({printer._print(self.args[0])})"


class Maximum(sympy.Function):
    """Elementwise ``max(a, b)``; ties split the derivative half and half."""

    nargs = 2
    is_real = True

    def _sympystr(self, printer: sympy.printing.StrPrinter) -> str:
        a, b = (printer._print(arg) for arg in self.args)
        return f"maximum({a}, {b})"


class Minimum(sympy.Function):
    """Elementwise ``min(a, b)``; ties split the derivative half and half."""

    nargs = 2
    is_real = True

    def _sympystr(self, printer: sympy.printing.StrPrinter) -> str:
        a, b = (printer._print(arg) for arg in self.args)
        return f"minimum({a}, {b})"


class MaxTieGrad(sympy.Function):
    """``1`` where ``a > b``, ``1/2`` where ``a == b``, ``0`` elsewhere: d max(a, b) / da."""

    nargs = 2
    is_real = True

    def _sympystr(self, printer: sympy.printing.StrPrinter) -> str:
        a, b = (printer._print(arg) for arg in self.args)
        return f"where({a} > {b}, 1, where({a} == {b}, 1/2, 0))"


def sqrt(x: sympy.Expr) -> sympy.Expr:
    """Square root, differentiated safely at 0 (derivative taken as 0 there)."""
    return SafeSqrt(sympy.sympify(x))  # type: ignore[no-any-return]  # sympy: untyped __new__


def abs(x: sympy.Expr) -> sympy.Expr:  # noqa: A001 - the name users expect
    """Absolute value; derivative ``sign(x)`` (0 at 0)."""
    return sympy.Abs(sympy.sympify(x))  # type: ignore[no-any-return]  # sympy: untyped __new__


def sign(x: sympy.Expr) -> sympy.Expr:
    """Sign in {-1, 0, 1}; derivative 0."""
    return Sign(sympy.sympify(x))  # type: ignore[no-any-return]  # sympy: untyped __new__


def exp(x: sympy.Expr) -> sympy.Expr:
    """Exponential."""
    return sympy.exp(sympy.sympify(x))  # type: ignore[no-any-return]  # sympy: untyped __new__


def log(x: sympy.Expr) -> sympy.Expr:
    """Natural logarithm."""
    return sympy.log(sympy.sympify(x))  # type: ignore[no-any-return]  # sympy: untyped __new__


def maximum(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """Elementwise maximum; at a tie each argument gets half the cotangent."""
    return Maximum(sympy.sympify(a), sympy.sympify(b))  # type: ignore[no-any-return]  # sympy: untyped __new__


def minimum(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """Elementwise minimum; at a tie each argument gets half the cotangent."""
    return Minimum(sympy.sympify(a), sympy.sympify(b))  # type: ignore[no-any-return]  # sympy: untyped __new__


def eq(a: sympy.Expr, b: sympy.Expr) -> sympy.Basic:
    """The comparison ``a == b`` for use in :func:`where` (Python's ``==`` is structural)."""
    return sympy.Eq(sympy.sympify(a), sympy.sympify(b), evaluate=False)


def ne(a: sympy.Expr, b: sympy.Expr) -> sympy.Basic:
    """The comparison ``a != b`` for use in :func:`where`."""
    return sympy.Ne(sympy.sympify(a), sympy.sympify(b), evaluate=False)


def where(condition: sympy.Basic, if_true: sympy.Expr, if_false: sympy.Expr) -> sympy.Expr:
    """``if_true`` where ``condition`` holds, else ``if_false`` (both sides are evaluated).

    ``condition`` is a comparison of symbols such as ``nu > 0`` or ``sympy.Eq(count, 1)``.
    """
    if isinstance(condition, bool):
        raise TypeError(
            "where(condition, ...): condition is a Python bool; `==` and `!=` compare sympy "
            "expressions structurally, so write `sym.eq(count, 1)` or `sym.ne(x, 0)` instead"
        )
    condition = sympy.sympify(condition)
    if not isinstance(condition, sympy.logic.boolalg.Boolean):
        raise TypeError(
            f"where(condition, ...): condition must be a comparison such as `nu > 0`, "
            f"got {condition!r}"
        )
    return sympy.Piecewise((sympy.sympify(if_true), condition), (sympy.sympify(if_false), True))
