"""Symbolic differentiation of rules: vector-Jacobian and Jacobian-vector products in sympy.

For outputs :math:`y_o = f_o(x_1, \\dots, x_n)` and cotangents :math:`\\bar y_o`, the VJP is
:math:`\\bar x_i = \\sum_o \\bar y_o \\, \\partial f_o / \\partial x_i`; for tangents
:math:`\\dot x_i` the JVP (forward mode) is
:math:`\\dot y_o = \\sum_i \\partial f_o / \\partial x_i \\, \\dot x_i`. Both use the same
partial derivatives, hence the same conventions. Sums, products, ``where`` and comparisons are
differentiated here; every other head goes through the explicit table in
:mod:`optcompile.lowering.safe`, so no derivative convention is hidden in sympy.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from optcompile.lowering.errors import InternalError
from optcompile.lowering.safe import derivative_rule

__all__ = ["derivative", "jvp", "vjp"]

_ZERO: sympy.Integer = sympy.Integer(0)


def derivative(
    expr: sympy.Expr,
    x: sympy.Symbol,
    memo: dict[tuple[sympy.Basic, sympy.Symbol], sympy.Expr] | None = None,
) -> sympy.Expr:
    """The partial derivative of ``expr`` with respect to the symbol ``x``.

    Args:
        expr: an expression built from the heads a rule may use.
        x: the symbol to differentiate by.
        memo: optional cache shared across calls on subexpressions of the same rule.

    Raises:
        InternalError: the expression holds a head with no row in the derivative table.
    """
    memo = {} if memo is None else memo
    return _derivative(sympy.sympify(expr), x, memo)


def _derivative(
    expr: sympy.Basic, x: sympy.Symbol, memo: dict[tuple[sympy.Basic, sympy.Symbol], sympy.Expr]
) -> sympy.Expr:
    if x not in expr.free_symbols:
        return _ZERO
    if expr == x:
        return sympy.Integer(1)  # type: ignore[no-any-return]  # sympy: untyped __new__
    key = (expr, x)
    if key in memo:
        return memo[key]
    if isinstance(expr, sympy.Add):
        result = sympy.Add(*(_derivative(arg, x, memo) for arg in expr.args))
    elif isinstance(expr, sympy.Mul):
        terms = []
        for i, factor in enumerate(expr.args):
            d = _derivative(factor, x, memo)
            if d != 0:
                terms.append(sympy.Mul(d, *(f for j, f in enumerate(expr.args) if j != i)))
        result = sympy.Add(*terms)
    elif isinstance(expr, sympy.Piecewise):
        # sympy types Piecewise.args as tuple[Basic, ...]; they are (expr, cond) ExprCondPairs.
        branches = [(_derivative(value, x, memo), cond) for value, cond in expr.args]  # type: ignore[misc,has-type]
        result = _ZERO if all(value == 0 for value, _ in branches) else sympy.Piecewise(*branches)
    else:
        row = derivative_rule(type(expr))
        if row is None:
            raise InternalError(
                f"no derivative rule for {type(expr).__name__} in {expr}; the rule checker "
                f"should have rejected it. Please report this with the rule's source."
            )
        partials = row.partials(*expr.args)
        result = sympy.Add(
            *(
                partial * _derivative(arg, x, memo)
                for arg, partial in zip(expr.args, partials, strict=True)
                if x in arg.free_symbols
            )
        )
    memo[key] = result
    return result


def vjp(
    outputs: Sequence[sympy.Expr],
    cotangents: Sequence[sympy.Symbol | None],
    wrt: Sequence[sympy.Symbol],
) -> list[sympy.Expr]:
    """The cotangent of each symbol in ``wrt``: ``sum_o cotangents[o] * d outputs[o] / d wrt``.

    A ``None`` cotangent means that output's cotangent is zero (it is skipped). A result of
    exactly ``0`` means the input does not influence any output with a cotangent.
    """
    memo: dict[tuple[sympy.Basic, sympy.Symbol], sympy.Expr] = {}
    result = []
    for x in wrt:
        terms = [
            cot * _derivative(out, x, memo)
            for out, cot in zip(outputs, cotangents, strict=True)
            if cot is not None
        ]
        result.append(sympy.Add(*terms))
    return result


def jvp(
    outputs: Sequence[sympy.Expr],
    tangents: Sequence[sympy.Symbol | None],
    wrt: Sequence[sympy.Symbol],
) -> list[sympy.Expr]:
    """The tangent of each output: ``sum_i d outputs[o] / d wrt[i] * tangents[i]``.

    A ``None`` tangent means that input's tangent is zero (it is skipped). A result of exactly
    ``0`` means no input with a tangent influences that output.
    """
    memo: dict[tuple[sympy.Basic, sympy.Symbol], sympy.Expr] = {}
    return [
        sympy.Add(
            *(
                _derivative(out, x, memo) * tangent
                for x, tangent in zip(wrt, tangents, strict=True)
                if tangent is not None
            )
        )
        for out in outputs
    ]
