r"""Neumann series: approximate ``A^{-1} b`` (or ``A^{-1}``) by a truncated geometric series.

For a step size :math:`\alpha` with spectral radius :math:`\rho(I - \alpha A) < 1`,

.. math::

    A^{-1} = \alpha\,[I - (I - \alpha A)]^{-1} = \alpha \sum_{k \ge 0} (I - \alpha A)^k,

so ``maxiter`` terms need ``maxiter`` matvecs and no inner products: the loop is branch-free,
vmappable, and synchronises nothing. For a symmetric positive definite :math:`A` the series
converges iff :math:`0 < \alpha < 2 / \lambda_{\max}(A)`; the error after :math:`K` terms is
:math:`(I - \alpha A)^{K+1} A^{-1} b`. iMAML uses it as a cheap, low-accuracy inverse Hessian.
"""

from __future__ import annotations

import warnings
from typing import Any

import optree
import torch

from optcompile.linalg.utils import host_value, normalize_matvec, tree_vdot_real

__all__ = ["ns", "ns_inv"]


def _check_maxiter(maxiter: int | None) -> int:
    if maxiter is None:
        return 10
    if maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative integer, got {maxiter}")
    return maxiter


def ns(A: Any, b: Any, maxiter: int | None = None, *, alpha: float | None = None) -> Any:
    r"""Solve ``A x = b`` approximately by ``maxiter`` terms of the Neumann series.

    Computes :math:`x = \alpha \sum_{k=0}^{K} (I - \alpha A)^k b` with the recursion
    :math:`v_{k+1} = v_k - \alpha A v_k`, :math:`x = \alpha (b + v_1 + \dots + v_K)`.

    Args:
        A: a function ``x -> A x``, a square matrix, or a tree of square matrices (leafwise).
        b: the right-hand side, a tensor or a tree of tensors.
        maxiter: the number of terms after the first (default 10).
        alpha: the step :math:`\alpha` (default 1.0).

    Returns:
        The approximate solution, with the structure of ``b``.

    Warns:
        RuntimeWarning: the terms grow (the last one is larger than ``b``): the series diverges
            because :math:`\rho(I - \alpha A) \ge 1`; a smaller ``alpha`` fixes it.

    Examples:
        >>> ns(torch.tensor([[0.5, 0.0], [0.0, 0.8]]), torch.ones(2), maxiter=50)
        tensor([2.0000, 1.2500])
    """
    maxiter = _check_maxiter(maxiter)
    matvec = normalize_matvec(A)
    step = 1.0 if alpha is None else alpha
    v = b
    total = b
    for _ in range(maxiter):
        v = optree.tree_map(lambda vi, avi: vi - step * avi, v, matvec(v))
        total = optree.tree_map(torch.add, total, v)
    if maxiter > 0:
        _warn_if_diverging(tree_vdot_real(v, v), tree_vdot_real(b, b), maxiter, step)
    return total if alpha is None else optree.tree_map(lambda t: step * t, total)


def _warn_if_diverging(last2: torch.Tensor, b2: torch.Tensor, maxiter: int, alpha: float) -> None:
    last, first = host_value(last2), host_value(b2)
    if last is None or first is None:
        return
    grew = last > first
    if not bool(grew.any()):
        return
    warnings.warn(
        f"the Neumann series diverges: after {maxiter} terms the last term has norm "
        f"{float(last.max().sqrt()):.3e} > ||b|| = {float(first.max().sqrt()):.3e}, so the "
        f"spectral radius of I - alpha*A is >= 1 (alpha={alpha}). The solution is wrong; use "
        "0 < alpha < 2 / lambda_max(A) for a positive definite A, or solve_cg.",
        RuntimeWarning,
        stacklevel=3,
    )


def _ns_inv_matrix(A: torch.Tensor, maxiter: int, alpha: float | None) -> torch.Tensor:
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"`A` must be a square matrix, but has shape: {tuple(A.shape)}")
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    step = 1.0 if alpha is None else alpha
    contraction = eye - step * A
    # Horner: S_K = I + C S_{K-1} = I + C + ... + C^K, one matmul per term.
    total = eye
    for _ in range(maxiter):
        total = eye + contraction @ total
    return step * total


def ns_inv(A: Any, maxiter: int | None = None, *, alpha: float | None = None) -> Any:
    r"""Approximate ``A^{-1}`` by :math:`\alpha \sum_{k=0}^{K} (I - \alpha A)^k`, leafwise.

    Args:
        A: a square matrix or a tree of square matrices.
        maxiter: the number of terms after the first (default 10).
        alpha: the step :math:`\alpha` (default 1.0).

    Returns:
        The approximate inverse, with the structure of ``A``.

    Raises:
        ValueError: a leaf of ``A`` is not a square matrix.

    Examples:
        >>> ns_inv(torch.tensor([[0.5, 0.0], [0.0, 0.8]]), maxiter=50)
        tensor([[2.0000, 0.0000],
                [0.0000, 1.2500]])
    """
    maxiter = _check_maxiter(maxiter)
    return optree.tree_map(lambda a: _ns_inv_matrix(a, maxiter, alpha), A)
