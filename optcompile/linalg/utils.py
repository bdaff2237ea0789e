"""Helpers shared by the iterative solvers: matvec normalisation, tree inner products, and
reading a convergence flag on the host only where that is possible.

The solvers keep their state on the device. The only host reads are an optional early exit
every few iterations and one convergence check at the end. Converged iterates are frozen with
``torch.where``, so stopping early never changes the result: it only skips no-op iterations.
Under ``torch.func.vmap`` the flags of all tasks are read at once (the loop stops when every
task has converged); while ``torch.compile`` traces nothing is read and the whole budget runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import optree
import torch

from optcompile.lowering.transforms import unwrapped

__all__ = ["cat_shapes", "normalize_matvec", "tree_size", "tree_vdot_real", "host_value"]


def cat_shapes(tree: Any) -> tuple[int, ...]:
    """Concatenate the shapes of the leaves of a tree of tensors (TorchOpt's helper)."""
    leaves = optree.tree_leaves(tree)
    return tuple(itertools.chain.from_iterable(tuple(leaf.shape) for leaf in leaves))


def tree_size(tree: Any) -> int:
    """The number of unknowns in a tree of tensors: the sum of the leaves' element counts."""
    return sum(leaf.numel() for leaf in optree.tree_leaves(tree))


def tree_vdot_real(tree_x: Any, tree_y: Any) -> torch.Tensor:
    r"""``\sum_i \mathrm{Re}\langle x_i, y_i\rangle`` over the leaves, as a 0-d tensor.

    Unlike :func:`optcompile.pytree.tree_vdot_real` this never leaves the device, so it is
    usable inside a loop that must not synchronise and under ``torch.func.vmap``.
    """
    leaves_x, spec = optree.tree_flatten(tree_x)
    leaves_y = spec.flatten_up_to(tree_y)
    total = None
    for x, y in zip(leaves_x, leaves_y, strict=True):
        x, y = x.reshape(-1), y.reshape(-1)
        term = torch.vdot(x, y).real if x.is_complex() else torch.dot(x, y)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("expected a tree with at least one tensor leaf, got an empty tree")
    return total


def normalize_matvec(matvec: Any) -> Callable[[Any], Any]:
    """Turn a matrix (or a tree of square matrices, one per leaf) into a matvec function.

    Args:
        matvec: a function ``x -> A x``, or a square matrix, or a tree of square matrices
            applied leafwise to a tree of vectors of the same structure.

    Returns:
        A function computing ``A x``.

    Raises:
        TypeError: a matrix leaf is not a square 2-D tensor.
    """
    if callable(matvec):
        return matvec
    mats, spec = optree.tree_flatten(matvec)
    for mat in mats:
        if not isinstance(mat, torch.Tensor) or mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            shape = tuple(mat.shape) if isinstance(mat, torch.Tensor) else type(mat).__name__
            raise TypeError(f"Linear operator must be a square matrix, but has shape: {shape}")

    def _matvec(x: Any) -> Any:
        xs = optree.tree_leaves(x)
        if len(xs) != len(mats):
            raise ValueError(
                f"`x` must have the same number of leaves as `matvec`, but has {len(xs)} leaves "
                f"and `matvec` has {len(mats)} leaves"
            )
        return optree.tree_unflatten(spec, [m @ v for m, v in zip(mats, xs, strict=True)])

    return _matvec


def host_value(t: torch.Tensor) -> torch.Tensor | None:
    """The plain tensor behind ``t``, holding its values for every batch element, or None.

    Inside ``torch.func.vmap`` a 0-d flag is one value per task: peeling the functorch
    wrappers gives the underlying tensor with the batch dimension(s), so ``.any()`` on it asks
    "is any task still iterating?". Wrappers of ``torch.func.grad``/``jacrev`` hold ordinary
    values and are peeled too. While ``torch.compile`` traces, reading would break the graph:
    None is returned and the caller runs its whole budget.
    """
    if torch.compiler.is_compiling():
        return None
    return unwrapped(t).detach()
