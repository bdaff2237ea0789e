"""Emit a Python function over torch ops from sympy expressions.

The printed code uses only ``+ - * / **``, comparisons and the helpers of
:mod:`optcompile.lowering.emit.runtime` (imported as ``_rt``), so the same source runs eagerly and
under ``torch.compile``. Divisions are printed as divisions (not as multiplication by a
reciprocal) so that results round like the hand-written optimizers in ``torch.optim``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import sympy

from optcompile.lowering.cse import eliminate_common_subexpressions
from optcompile.lowering.errors import InternalError
from optcompile.lowering.functions import (
    Maximum,
    MaxTieGrad,
    Minimum,
    SafeSqrt,
    Sign,
    SqrtGrad,
)

if TYPE_CHECKING:
    from sympy.functions.elementary.piecewise import ExprCondPair

__all__ = ["OutputSpec", "emit_function", "print_expr"]


class _Reciprocal(sympy.Function):
    """``1/x`` of a scalar-only ``x``, kept opaque so that it is computed once per call."""

    nargs = 1


def _hoist_scalar_divisions(expr: sympy.Expr, tensors: set[sympy.Symbol]) -> sympy.Expr:
    """Rewrite ``t / s`` (``s`` free of tensor inputs) as ``t * (1/s)``.

    A per-element division costs several times a multiplication, and at sizes that fit in
    cache Adam's two bias-correction divisions made the kernel compute-bound. The reciprocal is
    a scalar, computed once per call (hoisted out of the loop by Inductor). Results change by at
    most one rounding of the reciprocal.
    """
    return expr.replace(  # type: ignore[return-value]  # sympy: Basic.replace -> Basic
        lambda e: (
            isinstance(e, sympy.Pow)
            and e.exp.is_Integer
            and e.exp < 0
            and not (e.base.free_symbols & tensors)
        ),
        lambda e: _Reciprocal(e.base) ** (-e.exp),
    )


_FUNCTIONS: dict[type[sympy.Basic], str] = {
    SafeSqrt: "_rt.sqrt",
    SqrtGrad: "_rt.sqrt_grad",
    sympy.Abs: "_rt.abs",
    Sign: "_rt.sign",
    sympy.sign: "_rt.sign",
    sympy.exp: "_rt.exp",
    sympy.log: "_rt.log",
    Maximum: "_rt.maximum",
    Minimum: "_rt.minimum",
    MaxTieGrad: "_rt.max_tie_grad",
}
_RELATIONS: dict[type[sympy.Basic], str] = {
    sympy.StrictGreaterThan: ">",
    sympy.GreaterThan: ">=",
    sympy.StrictLessThan: "<",
    sympy.LessThan: "<=",
    sympy.Equality: "==",
    sympy.Unequality: "!=",
}


def print_expr(expr: sympy.Basic, names: Mapping[sympy.Symbol, str]) -> str:
    """Python source for ``expr``; symbols are printed as ``names[symbol]``."""
    if isinstance(expr, sympy.Symbol):
        return names[expr]
    if isinstance(expr, sympy.Integer):
        return repr(float(expr)) if abs(int(expr)) > 2**52 else repr(int(expr))
    if isinstance(expr, sympy.Number | sympy.core.numbers.NumberSymbol):
        return repr(float(expr))
    if isinstance(expr, sympy.logic.boolalg.BooleanTrue):
        return "True"
    if isinstance(expr, sympy.logic.boolalg.BooleanFalse):
        return "False"
    if isinstance(expr, sympy.Add):
        return "(" + " + ".join(print_expr(arg, names) for arg in expr.args) + ")"
    if isinstance(expr, sympy.Mul):
        return _print_mul(expr, names)
    if isinstance(expr, sympy.Pow):
        return _print_pow(expr, names)
    if isinstance(expr, sympy.Piecewise):
        # sympy types Piecewise.args as tuple[Basic, ...]; they are ExprCondPairs.
        return _print_piecewise(expr.args, names)  # type: ignore[arg-type]
    if type(expr) in _RELATIONS:
        lhs, rhs = (print_expr(arg, names) for arg in expr.args)
        return f"({lhs} {_RELATIONS[type(expr)]} {rhs})"
    if isinstance(expr, sympy.And | sympy.Or):
        op = " & " if isinstance(expr, sympy.And) else " | "
        return "(" + op.join(print_expr(arg, names) for arg in expr.args) + ")"
    if isinstance(expr, sympy.Not):
        return f"(~{print_expr(expr.args[0], names)})"
    if isinstance(expr, _Reciprocal):
        return f"(1.0 / {print_expr(expr.args[0], names)})"
    if type(expr) in _FUNCTIONS:
        args = ", ".join(print_expr(arg, names) for arg in expr.args)
        return f"{_FUNCTIONS[type(expr)]}({args})"
    raise InternalError(f"the torch emitter cannot print {type(expr).__name__}: {expr}")


def _print_mul(expr: sympy.Mul, names: Mapping[sympy.Symbol, str]) -> str:
    if expr.args[0] == -1:
        rest = expr.args[1:]
        inner = rest[0] if len(rest) == 1 else sympy.Mul(*rest, evaluate=False)
        return f"(-{print_expr(inner, names)})"
    numerator, denominator = [], []
    for factor in expr.args:
        if isinstance(factor, sympy.Pow) and factor.exp.is_Integer and factor.exp < 0:
            denominator.append(print_expr(factor.base ** (-factor.exp), names))
        elif isinstance(factor, sympy.Rational) and not factor.is_Integer and factor.p == 1:
            denominator.append(repr(float(factor.q)))
        else:
            numerator.append(print_expr(factor, names))
    top = " * ".join(numerator) if numerator else "1.0"
    if not denominator:
        return f"({top})"
    bottom = denominator[0] if len(denominator) == 1 else "(" + " * ".join(denominator) + ")"
    return f"({top} / {bottom})"


def _print_pow(expr: sympy.Pow, names: Mapping[sympy.Symbol, str]) -> str:
    base = print_expr(expr.base, names)
    exponent = expr.exp
    if exponent.is_Integer:
        n = int(exponent)
        if n == 2:
            return f"({base} * {base})"
        if n == -1:
            return f"(1.0 / {base})"
        if n < 0:
            return f"(1.0 / {base} ** {-n})"
        return f"({base} ** {n})"
    return f"({base} ** {print_expr(exponent, names)})"


def _print_piecewise(branches: Sequence[ExprCondPair], names: Mapping[sympy.Symbol, str]) -> str:
    (value, condition), rest = branches[0], branches[1:]
    if condition is sympy.true or not rest:
        return print_expr(value, names)
    cond = print_expr(condition, names)
    return f"_rt.where({cond}, {print_expr(value, names)}, {_print_piecewise(rest, names)})"


@dataclass(frozen=True)
class OutputSpec:
    """One return value of an emitted function.

    Attributes:
        expr: its expression, or None for an output that is always absent (returned as None).
        reduce_to: the scalar input whose cotangent this is: the elementwise value is summed to
            that input's shape (all elements for a 0-d input; per task for a hyper-parameter
            batched by ``vmap``, which the batching rule passes with shape ``(tasks, 1)``).
    """

    expr: sympy.Expr | None
    reduce_to: sympy.Symbol | None = None


def emit_function(
    name: str,
    args: Sequence[sympy.Symbol],
    outputs: Sequence[OutputSpec],
    tensor_symbols: set[sympy.Symbol],
    like: sympy.Symbol,
) -> str:
    """Python source of ``def name(*args): ...; return (outputs...)`` with CSE.

    Args:
        name: the function's name.
        args: its parameters, as symbols (printed with their own names).
        outputs: what it returns, in order.
        tensor_symbols: the symbols that are per-element tensors (the others are scalars).
        like: a tensor symbol that gives the shape of outputs that depend on no tensor.
    """
    names = {s: s.name for s in args}
    present = [o for o in outputs if o.expr is not None]
    hoisted = [
        _hoist_scalar_divisions(cast(sympy.Expr, o.expr), set(tensor_symbols))  # present: not None
        for o in present
    ]
    assignments, reduced = eliminate_common_subexpressions(hoisted)
    lines = [f"def {name}({', '.join(names[s] for s in args)}):"]
    for temporary, value in assignments:
        names[temporary] = temporary.name
        lines.append(f"    {temporary.name} = {print_expr(value, names)}")
    tensor_like = set(tensor_symbols) | {
        t for t, value in assignments if value.free_symbols & set(tensor_symbols)
    }
    results, it = [], iter(reduced)
    for output in outputs:
        if output.expr is None:
            results.append("None")
            continue
        expr = next(it)
        text = print_expr(expr, names)
        if output.reduce_to is not None:
            text = f"_rt.sum_to({text}, {names[like]}, {names[output.reduce_to]})"
        elif not expr.free_symbols & tensor_like:
            text = f"_rt.broadcast_like({text}, {names[like]})"
        results.append(text)
    lines.append(f"    return ({', '.join(results)},)")
    return "\n".join(lines) + "\n"
