"""Operators built from a matvec ``x -> A x``: its transpose, the normal operator, a ridge
shift, the materialised matrix; and the warm start shared by the iterative solvers.

Each is built once per solve and reused by every iteration: the transpose is one
``torch.func.vjp`` of the (linear) matvec, whose closure is then called K times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from optcompile.lowering.transforms import is_wrapped

__all__ = [
    "make_normal_matvec",
    "make_ridge_matvec",
    "make_rmatvec",
    "materialize_matvec",
    "WarmStart",
]

Matvec = Callable[[Any], Any]


def make_rmatvec(matvec: Matvec, example_x: Any) -> Matvec:
    r"""``y -> A^\top y`` from ``x -> A x``, by one vjp of the linear map (its closure is reused).

    Since :math:`x \mapsto Ax` is linear, its vjp at any point is :math:`y \mapsto A^\top y`.
    """
    _, vjp_fn = torch.func.vjp(matvec, example_x)
    return lambda y: vjp_fn(y)[0]


def make_normal_matvec(matvec: Matvec, example_x: Any) -> Matvec:
    r"""``x -> A^\top A x`` from ``x -> A x``: the operator of the normal equations."""
    rmatvec = make_rmatvec(matvec, example_x)
    return lambda x: rmatvec(matvec(x))


def make_ridge_matvec(matvec: Matvec, ridge: float = 0.0) -> Matvec:
    r"""``x -> A x + \mathrm{ridge}\cdot x``: Tikhonov regularisation of the system."""

    def ridge_matvec(x: Any) -> Any:
        return optree.tree_map(lambda ax, xi: ax + ridge * xi, matvec(x), x)

    return ridge_matvec


def materialize_matvec(matvec: Matvec, x: Any) -> tuple[torch.Tensor, Matvec, Matvec]:
    """The dense matrix of ``matvec`` over all unknowns of the tree ``x``, and (un)ravelling.

    Unlike TorchOpt's, which keeps only the diagonal blocks (one per leaf) and so drops the
    coupling between leaves, this builds the full ``n x n`` matrix: ``vmap`` of the matvec
    over the columns of the identity.

    Returns:
        ``(A, ravel, unravel)``: ``ravel`` maps a tree like ``x`` to a vector of length ``n``,
        ``unravel`` maps it back.
    """
    leaves, spec = optree.tree_flatten(x)
    shapes = [leaf.shape for leaf in leaves]
    sizes = [leaf.numel() for leaf in leaves]

    def ravel(tree: Any) -> torch.Tensor:
        return torch.cat([leaf.reshape(-1) for leaf in spec.flatten_up_to(tree)])

    def unravel(vec: torch.Tensor) -> Any:
        parts = torch.split(vec, sizes)
        return optree.tree_unflatten(
            spec, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
        )

    vec = ravel(x)
    eye = torch.eye(vec.numel(), dtype=vec.dtype, device=vec.device)
    # Row i of the vmapped result is A e_i, the i-th column of A.
    columns = torch.func.vmap(lambda e: ravel(matvec(unravel(e))))(eye)
    return columns.mT, ravel, unravel


class WarmStart:
    """The last solution of an iterative solver, offered as the next solve's starting point.

    In an outer loop the adjoint systems of successive steps differ little, so starting CG
    from the previous solution saves iterations (or, with a fixed budget, gains accuracy).
    Only plain tensors are remembered (detached): solutions computed under ``torch.func``
    transforms are per-call values and are not kept.
    """

    def __init__(self) -> None:
        self.last: Any = None

    def initial(self, b: Any) -> Any:
        """The remembered solution if it matches ``b`` in structure, shape, dtype and device."""
        if self.last is None or not _plain(b):
            return None
        leaves, spec = optree.tree_flatten(b)
        last_leaves, last_spec = optree.tree_flatten(self.last)
        if spec != last_spec:
            return None
        for new, old in zip(leaves, last_leaves, strict=True):
            if (new.shape, new.dtype, new.device) != (old.shape, old.dtype, old.device):
                return None
        return self.last

    def remember(self, x: Any) -> None:
        """Keep ``x`` (detached) for the next solve, unless it is a transformed value."""
        self.last = optree.tree_map(torch.Tensor.detach, x) if _plain(x) else None


def _plain(tree: Any) -> bool:
    return not any(is_wrapped(leaf) for leaf in optree.tree_leaves(tree))


def make_solver(solve: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[[Matvec, Any], Any]:
    """``solve`` with ``kwargs`` bound, as a ``(matvec, b) -> x`` solver.

    With ``warm_start=True`` in ``kwargs`` (CG-based solvers), each call starts from the
    previous call's solution when shapes match, else from ``init`` (or zeros).
    """
    kwargs = dict(kwargs)
    warm = kwargs.pop("warm_start", False)
    memory = WarmStart() if warm else None
    init = kwargs.pop("init", None) if warm else None

    def solver(matvec: Matvec, b: Any) -> Any:
        if memory is None:
            return solve(matvec, b, **kwargs)
        start = memory.initial(b)
        x = solve(matvec, b, init=init if start is None else start, **kwargs)
        memory.remember(x)
        return x

    # Named like the public factory (solve_cg, ...), with its options, for introspection.
    solver.__name__ = solver.__qualname__ = solve.__name__.lstrip("_")
    solver.keywords = {**kwargs, "warm_start": warm}  # type: ignore[attr-defined]
    solver.warm_start = memory  # type: ignore[attr-defined]
    return solver
