"""The backend interface: how a :class:`~optcompile.lowering.kernel.Kernel` becomes callables.

A backend turns a kernel into two *multi-tensor* callables, one call per optimizer step for all
parameter tensors of a group:

* ``forward(tensor_lists, scalars) -> output_lists``: ``tensor_lists`` holds one list per tensor
  input (update, state buffers, params), each with one tensor per parameter leaf; ``scalars``
  holds one 0-d tensor per scalar input (hyper-parameters, count).
* ``vjp(variant, cotangent_lists, tensor_lists, scalars) -> (tensor_grads, scalar_grads)``: the
  cotangent lists have one entry per output (None where absent); the result has one list (or
  None) per tensor input and one 0-d tensor (or None) per hyper-parameter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from optcompile.lowering.kernel import Kernel, Variant

__all__ = ["Backend", "ForwardFn", "VjpFn", "TensorLists"]

TensorLists = Sequence[Sequence[torch.Tensor]]
ForwardFn = Callable[[TensorLists, Sequence[torch.Tensor]], list[list[torch.Tensor]]]
VjpFn = Callable[
    [Variant, Sequence[Sequence[torch.Tensor] | None], TensorLists, Sequence[torch.Tensor]],
    tuple[list[list[torch.Tensor] | None], list[torch.Tensor | None]],
]


class Backend(ABC):
    """One way of running kernels (eager Python, Inductor, native C++/CUDA).

    Attributes:
        name: the name users select it by.
        batched_scalars: whether its callables accept scalar inputs of shape ``(tasks, 1)``
            next to ``(tasks, n)`` tensors, as ``vmap`` with a per-task hyper-parameter passes
            them. A backend without it runs such a step once per task.
        compiles_per_shape: whether a new kernel, shape or dtype costs a compilation (seconds);
            ``auto`` keeps small steps off such a backend.
    """

    name: str
    batched_scalars: bool = True
    compiles_per_shape: bool = False

    @abstractmethod
    def supports(self, kernel: Kernel, device: torch.device) -> str | None:
        """None if this backend can run ``kernel`` on ``device``, else the reason it cannot."""

    @abstractmethod
    def forward(self, kernel: Kernel) -> ForwardFn:
        """The multi-tensor forward of ``kernel``."""

    @abstractmethod
    def vjp(self, kernel: Kernel) -> VjpFn:
        """The multi-tensor VJP of ``kernel``."""
