"""The derivative table: one row per function a rule may use, with its convention.

Every row gives the partial derivatives of one head and says *why* where the textbook
derivative is not finite or not defined. :mod:`optcompile.lowering.diff` uses these rows and
nothing else, so this table is the complete list of derivative conventions.

The contract: the derived VJP is finite wherever the forward is finite, and equals the limit of
the true derivative where that limit exists. Where no derivative exists (a kink, a jump), the
row's convention says which value is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy

from optcompile.lowering.functions import (
    Maximum,
    MaxTieGrad,
    Minimum,
    SafeSqrt,
    Sign,
    SqrtGrad,
)

__all__ = ["DerivativeRule", "DERIVATIVES", "derivative_rule"]


@dataclass(frozen=True)
class DerivativeRule:
    """How to differentiate one head.

    Attributes:
        head: the sympy class (``sympy.Pow``, ``SafeSqrt``, ...).
        partials: maps the head's arguments to one partial derivative per argument.
        convention: what the row does where the textbook derivative is infinite or undefined,
            and why.
    """

    head: type
    partials: Callable[..., tuple[sympy.Expr, ...]]
    convention: str


def _pow_partials(base: sympy.Expr, exponent: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    d_base = exponent * base ** (exponent - 1)
    # d/de b**e = b**e * log(b); only needed when the exponent depends on a differentiated input
    # (a learnable exponent); for a constant or `count` exponent the diff pass never asks.
    d_exponent = base**exponent * sympy.log(base)
    return d_base, d_exponent


def _max_partials(a: sympy.Expr, b: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    return MaxTieGrad(a, b), MaxTieGrad(b, a)


def _min_partials(a: sympy.Expr, b: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    # min(a, b) = -max(-a, -b): d/da = MaxTieGrad(-a, -b) = [a < b] + [a == b] / 2.
    return MaxTieGrad(-a, -b), MaxTieGrad(-b, -a)


DERIVATIVES: tuple[DerivativeRule, ...] = (
    DerivativeRule(
        SafeSqrt,
        lambda x: (SqrtGrad(x),),
        "d sqrt(x)/dx = 1/(2 sqrt(x)) for x > 0 and 0 at x = 0. The textbook value at 0 is +inf, "
        "and autograd multiplies it by a zero factor (g = 0, or m = 0 in Adam's numerator), "
        "giving inf * 0 = NaN. Along any path x = k c^2 (a second moment) the chain-rule product "
        "tends to +-sqrt(k) from either side; 0 is the symmetric average, and it makes Adam's "
        "VJP equal the true limit (d update / d g = lr / eps at g = 0).",
    ),
    DerivativeRule(
        sympy.Pow,
        _pow_partials,
        "Integer powers and division (x**-1): d(a/b)/db = -a/b**2, finite wherever a/b is. "
        "Inside where(), both branches' partials are computed but the unselected one is "
        "discarded by the same where(), so a guarded division stays finite at first order; "
        "for higher orders guard the branch's input too (where(c, x, 1)), as RAdam does.",
    ),
    DerivativeRule(
        sympy.Abs,
        lambda x: (Sign(x),),
        "d|x|/dx = sign(x), taken as 0 at the kink x = 0 (the minimum-norm subgradient).",
    ),
    DerivativeRule(
        Sign,
        lambda x: (sympy.Integer(0),),
        "d sign(x)/dx = 0, including at the jump x = 0 (a Dirac delta has no finite value).",
    ),
    DerivativeRule(
        Maximum,
        _max_partials,
        "d max(a, b) = [a > b] da + [b > a] db; at a tie each argument gets 1/2, so the VJP is "
        "symmetric and sums to the cotangent (the average of the one-sided derivatives).",
    ),
    DerivativeRule(
        Minimum,
        _min_partials,
        "d min(a, b) = [a < b] da + [b < a] db; at a tie each argument gets 1/2.",
    ),
    DerivativeRule(sympy.exp, lambda x: (sympy.exp(x),), "Finite wherever exp(x) is."),
    DerivativeRule(sympy.log, lambda x: (1 / x,), "1/x: finite wherever log(x) is (x > 0)."),
)

_BY_HEAD = {row.head: row for row in DERIVATIVES}


def derivative_rule(head: type) -> DerivativeRule | None:
    """The table row for ``head``, or None when the table has no row for it."""
    return _BY_HEAD.get(head)
