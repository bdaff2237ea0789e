"""The helpers that generated code calls, so that it works on tensors and on Python numbers.

Generated code runs both eagerly and under ``torch.compile``; every helper is plain torch code
that Dynamo traces without graph breaks.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from optcompile.lowering.transforms import transforms_active

Value = torch.Tensor | float


class _SafeSqrt(torch.autograd.Function):
    """``sqrt`` whose derivative is :func:`sqrt_grad` (0 at 0, not inf), in both modes.

    Used only when the generated code is itself differentiated: a backward under
    ``create_graph=True`` or inside a ``torch.func`` transform runs the eager VJP, and
    differentiating its ``sqrt`` with torch's rule would bring back, one order up, the
    ``inf * 0 = NaN`` that the safe table removes. New-style (``setup_context``) and batched by
    ``vmap`` through its own torch ops, so every ``torch.func`` transform sees through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * sqrt_grad(x)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return tangent * sqrt_grad(x)


class _TracedSafeSqrt(torch.autograd.Function):
    """:class:`_SafeSqrt` inside ``torch.compile`` (Dynamo refuses a custom ``jvp``)."""

    forward = staticmethod(_SafeSqrt.forward)
    setup_context = staticmethod(_SafeSqrt.setup_context)
    backward = staticmethod(_SafeSqrt.backward)


def sqrt(x: Value) -> Value:
    if not isinstance(x, torch.Tensor):
        return math.sqrt(x)
    if torch.compiler.is_compiling():
        return cast(torch.Tensor, _TracedSafeSqrt.apply(x))  # type: ignore[no-untyped-call]
    if torch.is_grad_enabled() and (x.requires_grad or transforms_active()):
        return cast(torch.Tensor, _SafeSqrt.apply(x))  # type: ignore[no-untyped-call]
    return torch.sqrt(x)


def sqrt_grad(x: Value) -> Value:
    """``1/(2 sqrt(x))`` for x > 0, else 0; the inner where keeps rsqrt away from 0 (no inf)."""
    if not isinstance(x, torch.Tensor):
        return 0.5 / math.sqrt(x) if x > 0 else 0.0
    positive = x > 0
    return torch.where(positive, 0.5 * torch.rsqrt(torch.where(positive, x, 1.0)), 0.0)


def abs(x: Value) -> Value:  # noqa: A001 - mirrors the rule function's name
    return torch.abs(x) if isinstance(x, torch.Tensor) else math.fabs(x)


def sign(x: Value) -> Value:
    if isinstance(x, torch.Tensor):
        return torch.sign(x)
    return float((x > 0) - (x < 0))


def exp(x: Value) -> Value:
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def log(x: Value) -> Value:
    return torch.log(x) if isinstance(x, torch.Tensor) else math.log(x)


def _as_tensors(a: Value, b: Value) -> tuple[torch.Tensor, torch.Tensor]:
    ref = a if isinstance(a, torch.Tensor) else cast(torch.Tensor, b)  # callers pass a tensor
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(a, dtype=ref.dtype, device=ref.device)
    if not isinstance(b, torch.Tensor):
        b = torch.as_tensor(b, dtype=ref.dtype, device=ref.device)
    return a, b


def maximum(a: Value, b: Value) -> Value:
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return max(a, b)
    return torch.maximum(*_as_tensors(a, b))


def minimum(a: Value, b: Value) -> Value:
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return min(a, b)
    return torch.minimum(*_as_tensors(a, b))


def max_tie_grad(a: Value, b: Value) -> Value:
    """d max(a, b) / da: 1 where a > b, 1/2 at a tie, 0 elsewhere, in the inputs' dtype.

    Not ``where(a > b, 1.0, ...)``: with two number branches that is a float32 tensor, and a
    float32 tensor times a 0-d float64 hyper-parameter stays float32 (0-d tensors do not
    promote), which rounded AdaMax's float64 VJP to float32 precision.
    """
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return 1.0 if a > b else (0.5 if a == b else 0.0)
    a, b = _as_tensors(a, b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return (a > b).to(dtype) + 0.5 * (a == b).to(dtype)


def where(condition: torch.Tensor | bool, if_true: Value, if_false: Value) -> Value:
    if not isinstance(condition, torch.Tensor):
        return if_true if condition else if_false
    return torch.where(condition, if_true, if_false)


def broadcast_like(value: Value, like: torch.Tensor) -> torch.Tensor:
    """An output that does not depend on any tensor input, given the shape of ``like``."""
    return torch.zeros_like(like) + value


def sum_to(value: Value, like: torch.Tensor, target: Value) -> torch.Tensor:
    """The cotangent of a scalar input ``target``: the elementwise cotangent summed to its shape.

    A 0-d ``target`` gets the sum over all of ``like``'s elements; a ``(tasks, 1)`` target (a
    hyper-parameter batched by vmap, against ``(tasks, n)`` tensors) gets one sum per task.
    """
    full = (
        value
        if isinstance(value, torch.Tensor) and value.shape == like.shape
        else (torch.zeros_like(like) + value)
    )
    shape = target.shape if isinstance(target, torch.Tensor) else ()
    return full.sum_to_size(shape) if len(shape) else full.sum()
