"""One new-style ``torch.autograd.Function`` for every kernel and backend.

Forward runs the backend's fused forward; backward runs the backend's VJP for exactly the inputs
that need a gradient; ``jvp`` runs the forward-mode derivative derived from the same rule; and
``vmap`` moves the batch dimension of every leaf to the front and runs **one** kernel for all
tasks. Written as ``forward`` + ``setup_context``, so every ``torch.func`` transform (``grad``,
``vjp``, ``jacrev``, ``jvp``, ``jacfwd``, ``vmap``) and their nesting see through it.

Only the kernel's inputs are saved (never intermediates), so an unrolled inner loop of K steps
keeps K x (inputs) alive, not K x (every temporary of Adam).

A backward that must itself be differentiable (``create_graph=True``, or one running inside a
``torch.func`` transform) and every ``jvp`` run the eager code, which is made of differentiable,
batchable torch ops, whatever backend ran the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from optcompile.lowering.backends.base import Backend, TensorLists
from optcompile.lowering.backends.eager import run_forward, run_vjp
from optcompile.lowering.errors import LoweringError
from optcompile.lowering.kernel import Kernel, Variant
from optcompile.lowering.transforms import apply_without_transforms, is_wrapped, transforms_active

__all__ = ["apply_kernel"]

_N_STATIC = 4  # kernel, backend, n_leaves, n_tensor_inputs precede the tensors in apply()


class FusedStep(torch.autograd.Function):
    """One fused optimizer step for all leaves; its graph node reads ``FusedStepBackward``."""

    @staticmethod
    def forward(
        kernel: Kernel, backend: Backend, n_leaves: int, n_tensor_inputs: int, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        tensor_lists, scalars = _unflatten(inputs, n_leaves, n_tensor_inputs)
        outputs = backend.forward(kernel)(tensor_lists, scalars)
        # An output that is one of the inputs (a pass-through) must be a new tensor for autograd.
        return tuple(t for column in _distinct(outputs, inputs) for t in column)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        kernel, backend, n_leaves, n_tensor_inputs, *tensors = inputs
        ctx.kernel, ctx.backend = kernel, backend
        ctx.n_leaves, ctx.n_tensor_inputs = n_leaves, n_tensor_inputs
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        kernel: Kernel = ctx.kernel
        n_leaves, n_tensor = ctx.n_leaves, ctx.n_tensor_inputs
        inputs = ctx.saved_tensors
        tensor_lists, scalars = _unflatten(inputs, n_leaves, n_tensor)
        needs = ctx.needs_input_grad[_N_STATIC:]
        n_hypers = len(kernel.ir.hypers)
        needs_by_input = tuple(
            any(needs[j * n_leaves : (j + 1) * n_leaves]) for j in range(n_tensor)
        ) + tuple(needs[n_tensor * n_leaves + k] for k in range(n_hypers))
        cot_lists = _cotangent_lists(cotangents, n_leaves, tensor_lists[0])
        if torch.compiler.is_compiling():  # one traced backward for every call: see full_variant
            cot_lists = [c if c is not None else [torch.zeros_like(t) for t in tensor_lists[0]]
                         for c in cot_lists]  # fmt: skip
            variant, vjp = kernel.full_variant, run_vjp
        else:
            variant = Variant(needs_by_input, tuple(c is not None for c in cot_lists))
            differentiable = torch.is_grad_enabled() or (
                transforms_active() and any(is_wrapped(t) for t in (*inputs, *cotangents))
            )
            vjp = run_vjp if differentiable else _backend_vjp(ctx.backend, kernel)
        tensor_grads, scalar_grads = vjp(kernel, variant, cot_lists, tensor_lists, scalars)
        flat: list[torch.Tensor | None] = []
        for j, grads in enumerate(tensor_grads):
            flat.extend(
                grads[i] if grads is not None and needs[j * n_leaves + i] else None
                for i in range(n_leaves)
            )
        flat.extend(scalar_grads)
        flat.extend([None] * (len(scalars) - len(scalar_grads)))  # count: never differentiable
        return (None,) * _N_STATIC + tuple(flat)

    @staticmethod
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Forward mode: each output's tangent from the symbolically derived JVP, per leaf."""
        kernel: Kernel = ctx.kernel
        n_leaves, n_tensor = ctx.n_leaves, ctx.n_tensor_inputs
        tensor_lists, scalars = _unflatten(ctx.saved_tensors, n_leaves, n_tensor)
        tangents = tangents[_N_STATIC:]
        tangent_lists = [tangents[j * n_leaves : (j + 1) * n_leaves] for j in range(n_tensor)]
        hyper_tangents = tangents[n_tensor * n_leaves : n_tensor * n_leaves + len(kernel.ir.hypers)]
        has_tangent = tuple(any(t is not None for t in column) for column in tangent_lists) + tuple(
            t is not None for t in hyper_tangents
        )
        fn = kernel.jvp(has_tangent)
        per_leaf = []
        for i in range(n_leaves):
            like = tensor_lists[0][i]
            leaf_tangents = [
                (column[i] if column[i] is not None else torch.zeros_like(tensor_lists[j][i]))
                if has_tangent[j]
                else None
                for j, column in enumerate(tangent_lists)
            ]
            results = fn(*leaf_tangents, *hyper_tangents, *(t[i] for t in tensor_lists), *scalars)
            per_leaf.append([r if r is not None else torch.zeros_like(like) for r in results])
        return tuple(column[i] for column in zip(*per_leaf, strict=True) for i in range(n_leaves))

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        kernel: Kernel,
        backend: Backend,
        n_leaves: int,
        n_tensor_inputs: int,
        *inputs: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], tuple[int | None, ...]]:
        """Batching rule: one kernel call for all tasks.

        Every leaf becomes ``(tasks, elements)`` (an unbatched one is broadcast), a batched
        scalar becomes ``(tasks, 1)``; the elementwise kernel then runs once over all tasks, and
        its VJP sums a batched hyper-parameter's cotangent per task. Backends that take scalars
        as numbers (``batched_scalars = False``) run once per task when a scalar is batched.
        """
        dims = in_dims[_N_STATIC:]
        static = (kernel, backend, n_leaves, n_tensor_inputs)
        if all(d is None for d in dims):
            outputs = _apply(*static, *inputs)
            return outputs, (None,) * len(outputs)
        size = info.batch_size
        n_flat = n_leaves * n_tensor_inputs
        shapes = [_unbatched_shape(inputs[i], dims[i]) for i in range(n_leaves)]
        tensors = [
            _as_rows(t, d, size) for t, d in zip(inputs[:n_flat], dims[:n_flat], strict=True)
        ]
        scalar_dims = dims[n_flat:]
        scalars = [
            s if d is None else s.movedim(d, 0).reshape(size, 1)
            for s, d in zip(inputs[n_flat:], scalar_dims, strict=True)
        ]
        if backend.batched_scalars or all(d is None for d in scalar_dims):
            rows = _apply(*static, *tensors, *scalars)
        else:
            per_task = [
                _apply(
                    *static,
                    *(t[b] for t in tensors),
                    *(
                        s if d is None else s[b, 0]
                        for s, d in zip(scalars, scalar_dims, strict=True)
                    ),
                )
                for b in range(size)
            ]
            rows = tuple(torch.stack(column) for column in zip(*per_task, strict=True))
        outputs = tuple(r.reshape(size, *shapes[k % n_leaves]) for k, r in enumerate(rows))
        return outputs, (0,) * len(outputs)


class _TracedStep(torch.autograd.Function):
    """:class:`FusedStep` as Dynamo traces it inside a ``torch.compile`` region.

    Dynamo inlines an autograd.Function's forward and backward into the compiled graphs but
    refuses one with a custom ``jvp``; forward mode is not what a compiled meta-training step
    needs, so this twin has forward and backward only. The backward is the same derived VJP.
    """

    @staticmethod
    def forward(
        kernel: Kernel, backend: Backend, n_leaves: int, n_tensor_inputs: int, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        tensor_lists, scalars = _unflatten(inputs, n_leaves, n_tensor_inputs)
        outputs = _distinct_traced(run_forward(kernel, tensor_lists, scalars), inputs)
        return tuple(t for column in outputs for t in column)

    setup_context = staticmethod(FusedStep.setup_context)
    backward = staticmethod(FusedStep.backward)


def _distinct_traced(
    outputs: list[list[torch.Tensor]], inputs: Sequence[torch.Tensor]
) -> list[list[torch.Tensor]]:
    """:func:`_distinct` while Dynamo traces: by identity, since ``id()`` would be guarded on."""
    seen: list[torch.Tensor] = list(inputs)
    result = []
    for column in outputs:
        fresh = []
        for t in column:
            fresh.append(t.clone() if any(t is other for other in seen) else t)
            seen.append(fresh[-1])
        result.append(fresh)
    return result


def _apply(*args: Any) -> tuple[torch.Tensor, ...]:
    """``FusedStep.apply`` (torch leaves ``apply`` unannotated)."""
    return FusedStep.apply(*args)  # type: ignore[no-untyped-call, no-any-return]


def _unbatched_shape(t: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    shape = list(t.shape)
    if dim is not None:
        del shape[dim]
    return tuple(shape)


def _as_rows(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """``t`` as a contiguous ``(tasks, elements)`` tensor (one layout, so one compiled graph)."""
    if dim is None:
        return t.reshape(1, -1).expand(size, -1).contiguous()
    return t.movedim(dim, 0).reshape(size, -1).contiguous()


def _backend_vjp(backend: Backend, kernel: Kernel) -> Any:
    fn = backend.vjp(kernel)
    return lambda _kernel, variant, cots, tensor_lists, scalars: fn(
        variant, cots, tensor_lists, scalars
    )


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

    Whether the step is recorded for differentiation: never when ``differentiable`` is False
    (inputs are detached) or grad mode is off (``no_grad``, ``inference_mode``); otherwise when
    an input requires grad or a ``torch.func`` transform is active — functorch's wrapped
    tensors report ``requires_grad=False`` even when a transform differentiates through them,
    so under a transform the decision is left to ``autograd.Function.apply``.

    Args:
        kernel: the rule to run.
        backend: the backend that runs it.
        tensor_lists: one list per tensor input (update, state..., params), one tensor per leaf.
        scalars: one 0-d tensor per scalar input (hyper-parameters, then count).
        differentiable: record the step for autograd (meta-gradients).
    """
    n_leaves = len(tensor_lists[0])
    if n_leaves == 0:
        return [[] for _ in kernel.ir.outputs]
    flat = [t for column in tensor_lists for t in column] + list(scalars)
    if torch.compiler.is_compiling():
        # requires_grad and grad mode are known while tracing (and guarded on). A step that
        # records nothing is traced as plain ops: Dynamo would not call the Function right.
        if differentiable and torch.is_grad_enabled() and any(t.requires_grad for t in flat):
            packed = _TracedStep.apply(  # type: ignore[no-untyped-call]
                kernel, backend, n_leaves, len(tensor_lists), *flat
            )
        elif differentiable and torch.is_grad_enabled() and transforms_active():
            # Under a torch.func transform traced by Dynamo, wrapped inputs report
            # requires_grad=False even when the transform differentiates them; the plain ops
            # would make the step a constant (a silently wrong derivative). Refuse instead.
            raise LoweringError(
                f"{kernel.name}: a step whose inputs are all torch.func-wrapped values (no "
                f"input computed by a differentiable op) cannot be differentiated inside a "
                f"compiled torch.func transform; run this function eagerly "
                f"(@optcompile(backend='eager')) or move the transform outside the compiled "
                f"function"
            )
        else:
            with torch.no_grad():
                plain = _distinct_traced(run_forward(kernel, tensor_lists, scalars), flat)
            return _restore_dtypes(plain, tensor_lists)
    elif transforms_active():
        if not differentiable:
            flat = [t.detach() for t in flat]
        packed = _apply(kernel, backend, n_leaves, len(tensor_lists), *flat)
    elif differentiable and torch.is_grad_enabled() and any(t.requires_grad for t in flat):
        packed = apply_without_transforms(
            FusedStep, kernel, backend, n_leaves, len(tensor_lists), *flat
        )
    else:
        with torch.no_grad():
            outputs = _distinct(backend.forward(kernel)(tensor_lists, scalars), flat)
        return _restore_dtypes(outputs, tensor_lists)
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
