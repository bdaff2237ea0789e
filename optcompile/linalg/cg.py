r"""Conjugate gradient for ``A x = b`` with a fixed iteration budget and on-device convergence.

For a symmetric positive definite :math:`A`, CG minimises
:math:`\tfrac12 x^\top A x - b^\top x` over growing Krylov spaces. With a preconditioner
:math:`M \approx A^{-1}`, one iteration is

.. math::

    \alpha_k = \frac{r_k^\top z_k}{p_k^\top A p_k},\quad
    x_{k+1} = x_k + \alpha_k p_k,\quad
    r_{k+1} = r_k - \alpha_k A p_k,\quad
    z_{k+1} = M r_{k+1},\quad
    \beta_k = \frac{r_{k+1}^\top z_{k+1}}{r_k^\top z_k},\quad
    p_{k+1} = z_{k+1} + \beta_k p_k,

starting from :math:`r_0 = b - A x_0`, :math:`p_0 = z_0 = M r_0`. It stops when
:math:`\|r_k\| \le \max(\mathrm{rtol}\,\|b\|, \mathrm{atol})` (SciPy's non-legacy rule).

Unlike TorchOpt's port of SciPy, the stopping test never needs the host: a 0-d flag
``active`` freezes a converged system (its step sizes become 0 through ``torch.where``), so the
loop works unchanged under ``torch.func.vmap`` (one flag per task) and ``jacrev``, and on a GPU
it synchronises only when it chooses to look (``check_every``). Divisions are guarded where a
system is frozen, so differentiating through the loop (a ``create_graph=True`` backward of an
implicit root) stays finite.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import optree
import torch

from optcompile.linalg.utils import (
    cat_shapes,
    host_value,
    normalize_matvec,
    tree_size,
    tree_vdot_real,
)

__all__ = ["cg"]


def _axpy(alpha: torch.Tensor, x: Any, y: Any) -> Any:
    """``y + alpha * x`` leafwise."""
    return optree.tree_map(lambda xi, yi: yi + alpha * xi, x, y)


def default_maxiter(b: Any) -> int:
    """TorchOpt's budget, ``10 * size``, but never 0 (a scalar unknown has size 1; #222)."""
    return max(10 * tree_size(b), 1)


def cg(
    A: Any,
    b: Any,
    x0: Any = None,
    *,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    M: Any = None,
    check_every: int | Literal["auto"] | None = "auto",
) -> Any:
    r"""Solve ``A x = b`` by conjugate gradient, for a symmetric positive definite ``A``.

    Args:
        A: a function ``x -> A x`` on trees shaped like ``b``, or a square matrix (or a tree
            of square matrices applied leafwise).
        b: the right-hand side, a tensor or a tree of tensors of any shapes.
        x0: the starting guess, shaped like ``b`` (default: zeros).
        rtol: relative tolerance, ``||r|| <= max(rtol * ||b||, atol)`` stops.
        atol: absolute tolerance.
        maxiter: the iteration budget; default ``max(10 * size, 1)``, where ``size`` is the
            number of unknowns (TorchOpt's ``10 * size`` was 0 for a scalar).
        M: a preconditioner approximating ``A^{-1}``, as a function or matrix (default: none).
        check_every: read the convergence flag on the host every this many iterations and stop
            once every system has converged; ``None`` never reads it (no host synchronisation
            at all, the whole budget runs, and no convergence warning is given). ``"auto"``:
            every iteration for CPU tensors (a read costs nothing there), every 8 on an
            accelerator (one synchronisation per 8 iterations). Stopping early never changes
            the result: converged systems are frozen.

    Returns:
        The solution, with the structure of ``b``.

    Warns:
        RuntimeWarning: the residual is still above the tolerance after ``maxiter`` iterations;
            the message gives the residual norm, the tolerance and how to fix it.

    Raises:
        ValueError: ``x0`` and ``b`` have different shapes, or ``maxiter``/``check_every`` is
            not positive.

    Examples:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> cg(A, torch.tensor([1.0, 2.0]))
        tensor([0.0909, 0.6364])
    """
    if x0 is None:
        x0 = optree.tree_map(torch.zeros_like, b)
    elif cat_shapes(x0) != cat_shapes(b):
        raise ValueError(
            f"Tensors in x0 and b must have matching shapes: {cat_shapes(x0)} vs. {cat_shapes(b)}."
        )
    if maxiter is None:
        maxiter = default_maxiter(b)
    if maxiter < 1:
        raise ValueError(f"maxiter must be a positive integer, got {maxiter}")
    if check_every == "auto":
        on_cpu = all(leaf.device.type == "cpu" for leaf in optree.tree_leaves(b))
        check_every = 1 if on_cpu else 8
    if check_every is not None and (not isinstance(check_every, int) or check_every < 1):
        raise ValueError(
            f"check_every must be a positive integer, None or 'auto', got {check_every!r}"
        )
    A = normalize_matvec(A)
    precondition = M is not None
    M = normalize_matvec(M) if precondition else (lambda r: r)

    tol2 = torch.clamp(rtol**2 * tree_vdot_real(b, b), min=atol**2)
    x = x0
    r = optree.tree_map(torch.sub, b, A(x0))
    p = z = M(r)
    gamma = tree_vdot_real(r, z)
    rs = tree_vdot_real(r, r) if precondition else gamma
    active = rs > tol2
    one = torch.ones_like(gamma)
    for k in range(maxiter):
        if check_every is not None and k % check_every == 0:
            flags = host_value(active)
            if flags is not None and not bool(flags.any()):
                break
        Ap = A(p)
        # A frozen system gets alpha = beta = 0: x and r stay bit-for-bit, p becomes M r. The
        # inner where avoids 0/0 there, so even a derivative of this loop stays finite.
        alpha = torch.where(active, gamma / torch.where(active, tree_vdot_real(p, Ap), one), 0)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, Ap, r)
        z = M(r)
        gamma_next = tree_vdot_real(r, z)
        beta = torch.where(active, gamma_next / torch.where(active, gamma, one), 0)
        p = _axpy(beta, p, z)
        gamma = torch.where(active, gamma_next, gamma)
        rs = tree_vdot_real(r, r) if precondition else gamma
        active = active & (rs > tol2)
    if check_every is not None:
        _warn_if_not_converged(active, rs, tol2, maxiter)
    return x


def _warn_if_not_converged(
    active: torch.Tensor, rs: torch.Tensor, tol2: torch.Tensor, maxiter: int
) -> None:
    flags = host_value(active)
    if flags is None or not bool(flags.any()):
        return
    res, tol = host_value(rs), host_value(tol2)
    assert res is not None and tol is not None
    # Under vmap the flags hold one value per task: report the worst unconverged task.
    residual = (res[flags] if res.shape == flags.shape else res).max().sqrt()
    target = (tol[flags] if tol.shape == flags.shape else tol).max().sqrt()
    count = f" ({int(flags.sum())} of {flags.numel()} systems)" if flags.numel() > 1 else ""
    warnings.warn(
        f"cg did not converge in maxiter={maxiter} iterations: residual norm "
        f"{float(residual):.3e} > tolerance {float(target):.3e}{count}. The solution is "
        "inaccurate; raise maxiter, loosen rtol/atol, add a ridge, or use a preconditioner "
        "(CG also needs a symmetric positive definite operator: use solve_normal_cg for a "
        "non-symmetric one).",
        RuntimeWarning,
        stacklevel=3,
    )


