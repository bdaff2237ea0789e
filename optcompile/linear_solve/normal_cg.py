r"""``solve_normal_cg``: conjugate gradient on the normal equations :math:`A^\top A x = A^\top b`.

For any invertible ``A`` (not necessarily symmetric), :math:`A^\top A` is symmetric positive
definite, so CG applies. The price: two matvecs per iteration and the condition number
squared. Use it for user-written, non-symmetric optimality conditions; for the gradient of an
objective, :func:`optcompile.linear_solve.solve_cg` is faster and more accurate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optcompile import linalg
from optcompile.linear_solve.utils import make_ridge_matvec, make_rmatvec, make_solver

__all__ = ["solve_normal_cg"]


def _solve_normal_cg(
    matvec: Callable[[Any], Any],
    b: Any,
    ridge: float | None = None,
    init: Any = None,
    **kwargs: Any,
) -> Any:
    # The transpose is one vjp of the linear matvec, built once and reused every iteration.
    rmatvec = make_rmatvec(matvec, b if init is None else init)

    def normal_matvec(x: Any) -> Any:
        return rmatvec(matvec(x))

    if ridge is not None:
        normal_matvec = make_ridge_matvec(normal_matvec, ridge=ridge)
    return linalg.cg(normal_matvec, rmatvec(b), x0=init, **kwargs)


def solve_normal_cg(**kwargs: Any) -> Callable[[Callable[[Any], Any], Any], Any]:
    r"""A solver ``(matvec, b) -> x`` for ``A x = b`` by CG on :math:`A^\top A x = A^\top b`.

    Args:
        ridge (float, optional): solve :math:`(A^\top A + \mathrm{ridge}\, I) x = A^\top b`.
        init (tree, optional): the starting guess (default zeros).
        warm_start (bool, optional): start each solve from the previous solution.
        **kwargs: passed to :func:`optcompile.linalg.cg`.

    Returns:
        The solver.

    Examples:
        >>> import torch
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
        >>> solve_normal_cg()(lambda x: A @ x, torch.tensor([3.0, 1.0]))
        tensor([1.0000, 1.0000])
    """
    return make_solver(_solve_normal_cg, kwargs)
