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


def print_expr(
    expr: sympy.Basic,
    names: Mapping[sympy.Symbol, str],
    tensors: frozenset[sympy.Symbol] = frozenset(),
) -> str:
    """Python source for ``expr``; symbols are printed as ``names[symbol]``.

    ``tensors`` are the symbols that stand for per-element tensors: sums and products list
    their scalar-only terms first, so that Python combines the scalars before touching a
    tensor (``lr * c * t`` is one pass over ``t``, ``t * lr * c`` two), and a negative term is
    subtracted rather than negated and added (``p - u``, not ``p + (-u)``).
    """
    return _print(expr, _Printer(names, tensors))


class _Printer:
    """What printing needs throughout an expression: the names and which symbols are tensors."""

    def __init__(self, names: Mapping[sympy.Symbol, str], tensors: frozenset[sympy.Symbol]):
        self.names = names
        self.tensors = tensors

    def is_scalar(self, expr: sympy.Basic) -> bool:
        return not (expr.free_symbols & self.tensors)


def _print(expr: sympy.Basic, printer: _Printer) -> str:
    names = printer.names
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
        return _print_add(expr, printer)
    if isinstance(expr, sympy.Mul):
        return _print_mul(expr, printer)
    if isinstance(expr, sympy.Pow):
        return _print_pow(expr, printer)
    if isinstance(expr, sympy.Piecewise):
        # sympy types Piecewise.args as tuple[Basic, ...]; they are ExprCondPairs.
        return _print_piecewise(expr.args, printer)  # type: ignore[arg-type]
    if type(expr) in _RELATIONS:
        lhs, rhs = (_print(arg, printer) for arg in expr.args)
        return f"({lhs} {_RELATIONS[type(expr)]} {rhs})"
    if isinstance(expr, sympy.And | sympy.Or):
        op = " & " if isinstance(expr, sympy.And) else " | "
        return "(" + op.join(_print(arg, printer) for arg in expr.args) + ")"
    if isinstance(expr, sympy.Not):
        return f"(~{_print(expr.args[0], printer)})"
    if isinstance(expr, _Reciprocal):
        return f"(1.0 / {_print(expr.args[0], printer)})"
    if type(expr) in _FUNCTIONS:
        args = ", ".join(_print(arg, printer) for arg in expr.args)
        return f"{_FUNCTIONS[type(expr)]}({args})"
    raise InternalError(f"the torch emitter cannot print {type(expr).__name__}: {expr}")


def _scalars_first(args: Sequence[sympy.Basic], printer: _Printer) -> list[sympy.Basic]:
    """``args`` with the scalar-only ones first (a stable reordering)."""
    return sorted(args, key=lambda a: not printer.is_scalar(a))


def _print_add(expr: sympy.Add, printer: _Printer) -> str:
    """``a + b - c``: negative terms subtracted, scalar-only terms first."""
    positive, negative = [], []
    for term in _scalars_first(expr.args, printer):
        if term.could_extract_minus_sign():
            negative.append(_print(-cast(sympy.Expr, term), printer))
        else:
            positive.append(_print(term, printer))
    if not positive:
        return "(-" + " - ".join(negative) + ")"
    return "(" + " + ".join(positive) + "".join(f" - {n}" for n in negative) + ")"


def _print_mul(expr: sympy.Mul, printer: _Printer) -> str:
    if expr.args[0] == -1:
        rest = expr.args[1:]
        inner = rest[0] if len(rest) == 1 else sympy.Mul(*rest, evaluate=False)
        return f"(-{_print(inner, printer)})"
    numerator, denominator = [], []
    for factor in _scalars_first(expr.args, printer):
        if isinstance(factor, sympy.Pow) and factor.exp.is_Integer and factor.exp < 0:
            denominator.append(_print(factor.base ** (-factor.exp), printer))
        elif isinstance(factor, sympy.Rational) and not factor.is_Integer and factor.p == 1:
            denominator.append(repr(float(factor.q)))
        else:
            numerator.append(_print(factor, printer))
    top = " * ".join(numerator) if numerator else "1.0"
    if not denominator:
        return f"({top})"
    bottom = denominator[0] if len(denominator) == 1 else "(" + " * ".join(denominator) + ")"
    return f"({top} / {bottom})"


def _print_pow(expr: sympy.Pow, printer: _Printer) -> str:
    base = _print(expr.base, printer)
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
    return f"({base} ** {_print(exponent, printer)})"


def _print_piecewise(branches: Sequence[ExprCondPair], printer: _Printer) -> str:
    (value, condition), rest = branches[0], branches[1:]
    if condition is sympy.true or not rest:
        return _print(value, printer)
    cond = _print(condition, printer)
    return f"_rt.where({cond}, {_print(value, printer)}, {_print_piecewise(rest, printer)})"


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
    tensor_like = set(tensor_symbols)
    for temporary, value in assignments:
        names[temporary] = temporary.name
        lines.append(f"    {temporary.name} = {print_expr(value, names, frozenset(tensor_like))}")
        if value.free_symbols & tensor_like:
            tensor_like.add(temporary)
    results, it = [], iter(reduced)
    for output in outputs:
        if output.expr is None:
            results.append("None")
            continue
        expr = next(it)
        text = print_expr(expr, names, frozenset(tensor_like))
        if output.reduce_to is not None:
            text = f"_rt.sum_to({text}, {names[like]}, {names[output.reduce_to]})"
        elif not expr.free_symbols & tensor_like:
            text = f"_rt.broadcast_like({text}, {names[like]})"
        results.append(text)
    lines.append(f"    return ({', '.join(results)},)")
    return "\n".join(lines) + "\n"
