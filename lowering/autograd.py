"""One ``torch.autograd.Function`` for every kernel and backend.

Forward runs the backend's fused forward; backward runs the backend's VJP for exactly the inputs
that need a gradient. Only the kernel's inputs are saved (never intermediates), so an unrolled
inner loop of K steps keeps K x (inputs) alive, not K x (every temporary of Adam).

A backward under ``create_graph=True`` (asking for third-order derivatives) runs the eager VJP,
which is made of differentiable torch ops, whatever backend ran the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optcompile.lowering.backends.base import Backend, TensorLists
from optcompile.lowering.backends.eager import run_vjp
from optcompile.lowering.kernel import Kernel, Variant

__all__ = ["apply_kernel"]


class FusedStep(torch.autograd.Function):
    """One fused optimizer step for all leaves; its graph node reads ``FusedStepBackward``."""

    @staticmethod
    def forward(
        ctx: Any,
        kernel: Kernel,
        backend: Backend,
        n_leaves: int,
        n_tensor_inputs: int,
        *inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        tensor_lists, scalars = _unflatten(inputs, n_leaves, n_tensor_inputs)
        outputs = backend.forward(kernel)(tensor_lists, scalars)
        ctx.kernel, ctx.backend = kernel, backend
        ctx.n_leaves, ctx.n_tensor_inputs = n_leaves, n_tensor_inputs
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)
        # An output that is one of the inputs (a pass-through) must be a new tensor for autograd.
        return tuple(t for column in _distinct(outputs, inputs) for t in column)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        kernel: Kernel = ctx.kernel
        n_leaves, n_tensor = ctx.n_leaves, ctx.n_tensor_inputs
        inputs = ctx.saved_tensors
        tensor_lists, scalars = _unflatten(inputs, n_leaves, n_tensor)
        needs = ctx.needs_input_grad[4:]
        n_hypers = len(kernel.ir.hypers)
        needs_by_input = tuple(
            any(needs[j * n_leaves : (j + 1) * n_leaves]) for j in range(n_tensor)
        ) + tuple(needs[n_tensor * n_leaves + k] for k in range(n_hypers))
        cot_lists = _cotangent_lists(cotangents, n_leaves, tensor_lists[0])
        variant = Variant(needs_by_input, tuple(c is not None for c in cot_lists))
        if torch.is_grad_enabled():
            tensor_grads, scalar_grads = run_vjp(kernel, variant, cot_lists, tensor_lists, scalars)
        else:
            tensor_grads, scalar_grads = ctx.backend.vjp(kernel)(
                variant, cot_lists, tensor_lists, scalars
            )
        flat: list[torch.Tensor | None] = []
        for j, grads in enumerate(tensor_grads):
            flat.extend(
                grads[i] if grads is not None and needs[j * n_leaves + i] else None
                for i in range(n_leaves)
            )
        flat.extend(scalar_grads)
        flat.extend([None] * (len(scalars) - len(scalar_grads)))  # count: never differentiable
        return (None, None, None, None, *flat)


def _distinct(
    outputs: list[list[torch.Tensor]], inputs: Sequence[torch.Tensor]
) -> list[list[torch.Tensor]]:
    """Copy any output that is an input or another output.

    A rule may return the same value twice (momentum returns its new trace as the update and as
    the state) or an input unchanged; CSE then hands out one tensor for both. The caller owns
    the update (it may scale it in place) and the state separately, so they must not alias.
    """
    seen = {id(t) for t in inputs}
    result = []
    for column in outputs:
        fresh = []
        for t in column:
            fresh.append(t.clone() if id(t) in seen else t)
            seen.add(id(fresh[-1]))
        result.append(fresh)
    return result


def _unflatten(
    inputs: Sequence[torch.Tensor], n_leaves: int, n_tensor: int
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
    tensor_lists = [list(inputs[j * n_leaves : (j + 1) * n_leaves]) for j in range(n_tensor)]
    return tensor_lists, list(inputs[n_tensor * n_leaves :])


def _cotangent_lists(
    cotangents: Sequence[torch.Tensor | None], n_leaves: int, likes: Sequence[torch.Tensor]
) -> list[list[torch.Tensor] | None]:
    """Group cotangents by output; an output whose leaves all lack one gets None."""
    result: list[list[torch.Tensor] | None] = []
    for k in range(len(cotangents) // n_leaves):
        column = cotangents[k * n_leaves : (k + 1) * n_leaves]
        if all(c is None for c in column):
            result.append(None)
        else:
            result.append(
                [c if c is not None else torch.zeros_like(likes[i]) for i, c in enumerate(column)]
            )
    return result


def apply_kernel(
    kernel: Kernel,
    backend: Backend,
    tensor_lists: TensorLists,
    scalars: Sequence[torch.Tensor],
    *,
    differentiable: bool,
) -> list[list[torch.Tensor]]:
    """Run ``kernel`` on ``backend`` over all leaves; return one list of tensors per output.

    Args:
        kernel: the rule to run.
        backend: the backend that runs it.
        tensor_lists: one list per tensor input (update, state..., params), one tensor per leaf.
        scalars: one 0-d tensor per scalar input (hyper-parameters, then count).
        differentiable: record the step for autograd (meta-gradients). When False, or when no
            input requires grad, the forward runs without building a graph.
    """
    n_leaves = len(tensor_lists[0])
    if n_leaves == 0:
        return [[] for _ in kernel.ir.outputs]
    flat = [t for column in tensor_lists for t in column] + list(scalars)
    if not (differentiable and torch.is_grad_enabled() and any(t.requires_grad for t in flat)):
        with torch.no_grad():
            outputs = _distinct(backend.forward(kernel)(tensor_lists, scalars), flat)
    else:
        packed = FusedStep.apply(  # type: ignore[no-untyped-call]  # torch: apply is unannotated
            kernel, backend, n_leaves, len(tensor_lists), *flat
        )
        outputs = [
            list(packed[k * n_leaves : (k + 1) * n_leaves]) for k in range(len(kernel.ir.outputs))
        ]
    return _restore_dtypes(outputs, tensor_lists)


def _restore_dtypes(
    outputs: list[list[torch.Tensor]], tensor_lists: TensorLists
) -> list[list[torch.Tensor]]:
    """Give each output its input's dtype (update -> update, state -> state buffer).

    Scalars enter as 0-d tensors (float32/float64, or a user's learnable tensor of any floating
    dtype); against a tensor with dimensions they never change its dtype, but when a parameter
    is 0-d too, type promotion would follow the scalars.
    """
    return [
        [
            out if out.dtype == ref.dtype else out.to(ref.dtype)
            for out, ref in zip(c, r, strict=True)
        ]
        for c, r in zip(outputs, tensor_lists, strict=False)  # tensor_lists may end with params
    ]
