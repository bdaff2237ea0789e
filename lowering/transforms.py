"""Where optcompile meets ``torch.func``'s internals: one module for its private API.

The fused step, the safe ``sqrt``, the compiler and the state builders must know whether a
``torch.func`` transform (vmap, grad, jvp, ...) is running, see through the wrappers it puts
around tensors, and sometimes run outside it. torch offers these only as private functions;
keeping them here means one place to change when torch moves them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "activation_memory_budget",
    "apply_without_transforms",
    "is_wrapped",
    "outside_transforms",
    "transforms_active",
    "unwrapped",
]


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp, ...) is running around this call."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def apply_without_transforms(
    function: type[torch.autograd.Function], *args: Any
) -> Any:
    """``function.apply(*args)`` when no transform is active, without its per-call Python.

    ``autograd.Function.apply`` first binds the arguments with ``inspect.signature`` and looks
    for dead transform wrappers among them, then calls the C++ apply, which runs ``forward``
    and ``setup_context`` itself. Outside the transforms, with positional arguments and a
    ``forward`` without defaults, the C++ apply alone does the same (a quarter of a small
    fused step's overhead). Inside a transform, use ``function.apply``.
    """
    return super(torch.autograd.Function, function).apply(*args)  # type: ignore[misc]


def is_wrapped(t: torch.Tensor | None) -> bool:
    """Whether ``t`` is a transform's wrapper (a task's slice under vmap, a grad-tracked value).

    Such tensors report ``requires_grad=False`` even while a transform differentiates them.
    """
    return t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t)


def unwrapped(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor behind every wrapper of ``t`` (under vmap: all tasks' values)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


@contextlib.contextmanager
def outside_transforms() -> Iterator[None]:
    """Run the block with the transforms set aside (plain tensors, plain autograd)."""
    from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack

    with temporarily_clear_interpreter_stack():
        yield


def activation_memory_budget(fraction: float) -> contextlib.AbstractContextManager[None]:
    """Compile the block's graphs keeping at most ``fraction`` of the activations they would save.

    AOTAutograd splits a compiled function's joint graph into forward and backward; with a
    budget below 1 its partitioner saves only that fraction of the bytes it would otherwise keep
    for the backward (by its own estimate) and recomputes the cheapest of the rest there. Read
    when a graph is compiled, and part of the compile cache's key.
    """
    import torch._functorch.config as functorch_config

    patch: contextlib.AbstractContextManager[None] = functorch_config.patch(
        activation_memory_budget=fraction
    )
    return patch
