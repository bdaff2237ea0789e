"""Where optcompile meets ``torch.func``'s internals: one module for its private API.

The fused step, the safe ``sqrt``, the compiler and the state builders must know whether a
``torch.func`` transform (vmap, grad, jvp, ...) is running, see through the wrappers it puts
around tensors, and sometimes run outside it. torch offers these only as private functions;
keeping them here means one place to change when torch moves them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "activation_memory_budget",
    "is_wrapped",
    "outside_transforms",
    "transforms_active",
    "unwrapped",
]


def transforms_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp, ...) is running around this call."""
    return torch._C._functorch.peek_interpreter_stack() is not None


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

    return functorch_config.patch(activation_memory_budget=fraction)
