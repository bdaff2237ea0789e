r"""The autograd function behind :func:`custom_root`: a root solve whose backward is the
implicit function theorem.

If :math:`x^\star(\theta)` solves :math:`F(x^\star, \theta) = 0` and
:math:`A = \partial_x F` is invertible, then :math:`\partial_\theta x^\star = -A^{-1} B` with
:math:`B = \partial_\theta F`. For an output cotangent :math:`v`, the vector-Jacobian product is

.. math::

    v^\top \partial_\theta x^\star = u^\top B, \qquad A^\top u = -v,

one linear solve (the *adjoint* system) plus one vjp of :math:`F`. The matvec
:math:`u \mapsto A^\top u` is the closure of one ``torch.func.vjp`` of :math:`F` in
:math:`x`, built once per backward and reused by every solver iteration.

The function is new-style (``forward`` + ``setup_context``, ``generate_vmap_rule=True``),
written in ``torch.func`` ops throughout, so ``vmap`` over tasks, ``jacrev`` and ``grad`` see
through it (TorchOpt #223). With ``create_graph=True`` (or ``jacrev(jacrev(...))``) the
backward is itself differentiated, so second derivatives through the root are exact rather
than zero. Forward mode is the same theorem the other way round,
:math:`\dot x = -A^{-1} (\partial_\theta F\,\dot\theta)`, one solve with the matvec
:math:`u \mapsto A u` (a ``torch.func.jvp`` of :math:`F`): ``jvp``, ``jacfwd`` and ``hessian``
work too (JAXopt's root JVP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optree
import torch

__all__ = ["RootCall", "ImplicitRoot"]


@dataclass
class RootCall:
    """Everything non-tensor about one call: how to rebuild the arguments, and the results'
    structure (set by ``forward``)."""

    solver_fn: Callable[..., Any]
    optimality_fn: Callable[..., Any]
    solve: Callable[..., Any]
    has_aux: bool
    arg_specs: list[optree.PyTreeSpec]  # one per positional argument, then one for kwargs
    arg_leaves: list[list[Any]]  # their leaves; tensors replaced by None
    tensor_slots: list[tuple[int, int]]  # (argument, leaf) of each tensor passed to apply
    differentiable: list[bool]  # per tensor: in argnums and floating point
    solution_spec: optree.PyTreeSpec | None = None
    aux_spec: optree.PyTreeSpec | None = None
    aux_leaves: list[Any] = field(default_factory=list)
    n_solution: int = 0

    def rebuild(self, tensors: Sequence[torch.Tensor]) -> tuple[list[Any], dict[str, Any]]:
        """The solver's ``(args, kwargs)`` with ``tensors`` at their places."""
        leaves = [list(ls) for ls in self.arg_leaves]
        for (arg, leaf), tensor in zip(self.tensor_slots, tensors, strict=True):
            leaves[arg][leaf] = tensor
        values = [spec.unflatten(ls) for spec, ls in zip(self.arg_specs, leaves, strict=True)]
        return values[:-1], values[-1]


def _own(t: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``t`` detached, copied if it shares memory with an input (the solver returned one)."""
    t = t.detach()
    try:
        ptr = t.untyped_storage().data_ptr()
        shared = any(i.untyped_storage().data_ptr() == ptr for i in inputs)
    except (RuntimeError, NotImplementedError):
        shared = True
    return t.clone() if shared else t


class ImplicitRoot(torch.autograd.Function):
    """``apply(call, *tensors) -> (*solution_leaves, *aux_tensor_leaves)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(call: RootCall, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        args, kwargs = call.rebuild(tensors)
        out = call.solver_fn(*args, **kwargs)
        aux = None
        if call.has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    f"custom_root(..., has_aux=True): solver_fn must return a pair "
                    f"(solution, aux), got {type(out).__name__}"
                )
            out, aux = out
        leaves, call.solution_spec = optree.tree_flatten(out)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise TypeError(
                "custom_root: solver_fn must return a tensor or a tree of tensors (the root), "
                f"got {type(out).__name__}"
            )
        aux_all, call.aux_spec = optree.tree_flatten(aux)
        aux_tensors = [_own(t, tensors) for t in aux_all if isinstance(t, torch.Tensor)]
        call.aux_leaves = [None if isinstance(t, torch.Tensor) else t for t in aux_all]
        call.n_solution = len(leaves)
        return (*(_own(t, tensors) for t in leaves), *aux_tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        call, *tensors = inputs
        ctx.call = call
        solution, aux = output[: call.n_solution], output[call.n_solution :]
        if aux:
            ctx.mark_non_differentiable(*aux)
        # The initial guess (argument 0) is not needed: the root does not depend on it.
        saved = [t for t, (arg, _) in zip(tensors, call.tensor_slots, strict=True) if arg != 0]
        ctx.save_for_backward(*saved, *solution)
        ctx.save_for_forward(*saved, *solution)
        ctx.n_aux = len(aux)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        call: RootCall = ctx.call
        tensors, solution = _unpack(call, ctx.saved_tensors)
        needs = ctx.needs_input_grad[1:]
        wanted = [d and n for d, n in zip(call.differentiable, needs, strict=True)]
        cotangents = root_vjp(call, tensors, solution, grads[: call.n_solution], wanted)
        return (None, *cotangents)

    @staticmethod
    def jvp(ctx: Any, *tangents: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        call: RootCall = ctx.call
        tensors, solution = _unpack(call, ctx.saved_tensors)
        directions = {
            i: t
            for i, (t, d) in enumerate(zip(tangents[1:], call.differentiable, strict=True))
            if d and t is not None
        }
        out = root_jvp(call, tensors, solution, directions)
        return (*out, *(torch.zeros(()) for _ in range(ctx.n_aux)))


def _unpack(
    call: RootCall, saved: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor | None], Sequence[torch.Tensor]]:
    """The apply-inputs (None for argument 0's, which are not saved) and the solution."""
    solution = saved[len(saved) - call.n_solution :]
    args_tensors = iter(saved[: len(saved) - call.n_solution])
    tensors = [next(args_tensors) if arg != 0 else None for arg, _ in call.tensor_slots]
    return tensors, solution


def _leaves(tree: Any) -> tuple[torch.Tensor, ...]:
    return tuple(optree.tree_leaves(tree))


def _optimality(
    call: RootCall, tensors: list[torch.Tensor | None], solution: Sequence[torch.Tensor]
) -> tuple[Callable[..., tuple[torch.Tensor, ...]], Callable[..., Callable[..., Any]]]:
    """``F`` as a function of the solution's leaves, and a factory of ``F`` as a function of
    chosen apply-inputs (by index), each returning the residual's leaves."""
    assert call.solution_spec is not None
    spec = call.solution_spec
    args, kwargs = call.rebuild(tensors)  # type: ignore[arg-type]

    def in_x(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _leaves(call.optimality_fn(spec.unflatten(xs), *args[1:], **kwargs))

    def in_theta(index: Sequence[int]) -> Callable[..., tuple[torch.Tensor, ...]]:
        def fn(*thetas: torch.Tensor) -> tuple[torch.Tensor, ...]:
            replaced = list(tensors)
            for i, theta in zip(index, thetas, strict=True):
                replaced[i] = theta
            a, kw = call.rebuild(replaced)  # type: ignore[arg-type]
            return _leaves(call.optimality_fn(spec.unflatten(solution), *a[1:], **kw))

        return fn

    return in_x, in_theta


def root_vjp(
    call: RootCall,
    tensors: list[torch.Tensor | None],
    solution: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    wanted: Sequence[bool],
) -> list[torch.Tensor | None]:
    r"""Cotangents of the apply-inputs: :math:`u^\top \partial_\theta F` where
    :math:`A^\top u = -v`, for the ``wanted`` tensors; None for the others."""
    index = [i for i, w in enumerate(wanted) if w]
    if not index:
        return [None] * len(tensors)
    in_x, in_theta = _optimality(call, tensors, solution)
    residual, vjp_x = torch.func.vjp(in_x, *solution)
    _check_residual(residual, solution, call.optimality_fn)

    def matvec(u: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return vjp_x(tuple(u))  # u -> A^T u, the closure reused by every iteration

    u = tuple(_leaves(call.solve(matvec, tuple(-g for g in grads))))
    _, vjp_theta = torch.func.vjp(in_theta(index), *(tensors[i] for i in index))
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for i, cot in zip(index, vjp_theta(u), strict=True):
        out[i] = cot
    return out


def root_jvp(
    call: RootCall,
    tensors: list[torch.Tensor | None],
    solution: Sequence[torch.Tensor],
    directions: dict[int, torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    r"""Tangent of the solution: :math:`\dot x = -A^{-1} (\partial_\theta F\, \dot\theta)`,
    with the matvec :math:`u \mapsto A u` by forward mode."""
    if not directions:
        return tuple(torch.zeros_like(s) for s in solution)
    in_x, in_theta = _optimality(call, tensors, solution)
    index = list(directions)
    thetas = tuple(tensors[i] for i in index)
    _, b = torch.func.jvp(in_theta(index), thetas, tuple(directions[i] for i in index))
    _check_residual(b, solution, call.optimality_fn)

    def matvec(u: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return torch.func.jvp(in_x, tuple(solution), tuple(u))[1]  # u -> A u

    return tuple(_leaves(call.solve(matvec, tuple(-bi for bi in b))))


def _check_residual(
    residual: Sequence[torch.Tensor], solution: Sequence[torch.Tensor], fn: Callable[..., Any]
) -> None:
    got = [tuple(r.shape) for r in residual]
    want = [tuple(s.shape) for s in solution]
    if got != want:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise ValueError(
            f"custom_root: optimality_fn {name!r} returned leaves of shapes {got}, but the "
            f"solution has leaves of shapes {want}. The optimality residual F(x, *args) must "
            "have one entry per unknown, shaped like the solution (e.g. the gradient of an "
            "objective in x, or T(x) - x for a fixed point T)."
        )
