"""The eager backend: the generated Python runs op by op. The reference for every other backend.

Always available. Its VJP is made of differentiable torch ops, so it is also what a backward
under ``create_graph=True`` (third-order derivatives) runs on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from optcompile.lowering.backends.base import Backend, ForwardFn, TensorLists, VjpFn
from optcompile.lowering.kernel import Kernel, Variant

__all__ = ["EagerBackend", "run_forward", "run_vjp"]


def run_forward(
    kernel: Kernel, tensor_lists: TensorLists, scalars: Sequence[torch.Tensor]
) -> list[list[torch.Tensor]]:
    """Apply the per-element forward to each leaf; return one list per output."""
    per_leaf = [kernel.forward(*leaf, *scalars) for leaf in zip(*tensor_lists, strict=True)]
    return [list(column) for column in zip(*per_leaf, strict=True)]


def run_vjp(
    kernel: Kernel,
    variant: Variant,
    cotangent_lists: Sequence[Sequence[torch.Tensor] | None],
    tensor_lists: TensorLists,
    scalars: Sequence[torch.Tensor],
) -> tuple[list[list[torch.Tensor] | None], list[torch.Tensor | None]]:
    """Apply the per-element VJP to each leaf; sum the scalar cotangents over leaves.

    Each leaf's scalar cotangent already has its scalar's shape (0-d, or ``(tasks, 1)`` under
    vmap), so the sum over leaves is along a new leading dimension.
    """
    fn = kernel.vjp(variant)
    n_leaves = len(tensor_lists[0])
    n_tensor = len(tensor_lists)
    cots = [lst if lst is not None else [None] * n_leaves for lst in cotangent_lists]
    per_leaf = [
        fn(*(c[i] for c in cots), *(t[i] for t in tensor_lists), *scalars) for i in range(n_leaves)
    ]
    columns = list(zip(*per_leaf, strict=True))
    tensor_grads = [
        list(col) if variant.needs_grad[j] and col[0] is not None else None
        for j, col in enumerate(columns[:n_tensor])
    ]
    scalar_grads = [
        torch.stack(col).sum(0) if col[0] is not None else None for col in columns[n_tensor:]
    ]
    return tensor_grads, scalar_grads


class EagerBackend(Backend):
    """Runs the generated per-element functions eagerly, one leaf after another."""

    name = "eager"

    def supports(self, kernel: Kernel, device: torch.device) -> str | None:
        return None

    def forward(self, kernel: Kernel) -> ForwardFn:
        return lambda tensor_lists, scalars: run_forward(kernel, tensor_lists, scalars)

    def vjp(self, kernel: Kernel) -> VjpFn:
        return lambda variant, cots, tensor_lists, scalars: run_vjp(
            kernel, variant, cots, tensor_lists, scalars
        )
