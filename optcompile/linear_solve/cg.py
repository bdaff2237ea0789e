"""``solve_cg``: conjugate gradient for a symmetric positive definite system.

The right solver when the optimality condition is the gradient of an objective: its
Jacobian is the Hessian, symmetric, and positive definite at a strict minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optcompile import linalg
from optcompile.linear_solve.utils import make_ridge_matvec, make_solver

__all__ = ["solve_cg"]


def _solve_cg(
    matvec: Callable[[Any], Any],
    b: Any,
    ridge: float | None = None,
    init: Any = None,
    **kwargs: Any,
) -> Any:
    if ridge is not None:
        matvec = make_ridge_matvec(matvec, ridge=ridge)
    return linalg.cg(matvec, b, x0=init, **kwargs)


def solve_cg(**kwargs: Any) -> Callable[[Callable[[Any], Any], Any], Any]:
    r"""A solver ``(matvec, b) -> x`` for ``A x = b`` by conjugate gradient (``A`` SPD).

    Args:
        ridge (float, optional): solve :math:`(A + \mathrm{ridge}\, I) x = b` instead.
        init (tree, optional): the starting guess (default zeros).
        warm_start (bool, optional): start each solve from the previous solution (default
            False); see :class:`optcompile.linear_solve.utils.WarmStart`.
        **kwargs: passed to :func:`optcompile.linalg.cg` (``rtol``, ``atol``, ``maxiter``,
            ``M``, ``check_every``).

    Returns:
        The solver.

    Examples:
        >>> import torch
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
        >>> solve_cg()(lambda x: A @ x, torch.tensor([2.0, 2.0]))
        tensor([1.0000, 0.5000])
    """
    return make_solver(_solve_cg, kwargs)
