r"""``solve_inv``: solve ``A x = b`` with the dense matrix, or by a Neumann series.

``ns=False`` materialises ``A`` (``n`` matvecs, batched by ``vmap``) and calls
``torch.linalg.solve``: exact, for small problems. ``ns=True`` runs
:func:`optcompile.linalg.ns`, :math:`x \approx \alpha \sum_k (I - \alpha A)^k b`: cheap and
approximate, iMAML's choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optcompile import linalg
from optcompile.linear_solve.utils import make_ridge_matvec, make_solver, materialize_matvec

__all__ = ["solve_inv"]


def _solve_inv(
    matvec: Callable[[Any], Any],
    b: Any,
    ridge: float | None = None,
    ns: bool = False,
    **kwargs: Any,
) -> Any:
    if ridge is not None:
        matvec = make_ridge_matvec(matvec, ridge=ridge)
    if ns:
        return linalg.ns(matvec, b, **kwargs)
    if kwargs:
        raise TypeError(
            f"solve_inv(ns=False) takes only `ridge`; got {sorted(kwargs)} (these are options "
            "of the Neumann series: pass ns=True)"
        )
    A, ravel, unravel = materialize_matvec(matvec, b)
    return unravel(torch.linalg.solve(A, ravel(b)))


def solve_inv(**kwargs: Any) -> Callable[[Callable[[Any], Any], Any], Any]:
    r"""A solver ``(matvec, b) -> x`` for ``A x = b`` by matrix inversion or a Neumann series.

    Args:
        ridge (float, optional): solve :math:`(A + \mathrm{ridge}\, I) x = b` instead.
        ns (bool, optional): use the Neumann series (default False: a dense solve).
        **kwargs: with ``ns=True``, passed to :func:`optcompile.linalg.ns` (``maxiter``,
            ``alpha``).

    Returns:
        The solver.

    Examples:
        >>> A = torch.tensor([[0.5, 0.0], [0.0, 0.8]])
        >>> solve_inv(ns=True, maxiter=50)(lambda x: A @ x, torch.ones(2))
        tensor([2.0000, 1.2500])
    """
    return make_solver(_solve_inv, kwargs)
