"""Common-subexpression elimination over a rule's expressions (sympy's ``cse``)."""

from __future__ import annotations

from collections.abc import Sequence

import sympy

__all__ = ["eliminate_common_subexpressions"]


def eliminate_common_subexpressions(
    exprs: Sequence[sympy.Expr],
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """Return ``(assignments, reduced)``: temporaries ``_t0, _t1, ...`` and the outputs using them.

    ``order="none"`` keeps sympy from canonicalising the order of terms, which is slow on large
    VJPs and changes nothing in the result.
    """
    temporaries = sympy.numbered_symbols("_t", real=True)
    assignments, reduced = sympy.cse(list(exprs), symbols=temporaries, order="none")
    return list(assignments), list(reduced)
