"""Type aliases, as ``torchopt.typing`` (for annotations in user code)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

import torch
import torch.distributed.rpc as _rpc
from optree.typing import PyTree
from torch.distributions import Distribution
from torch.futures import Future

from optcompile.base import EmptyState, GradientTransformation, UninitializedState
from optcompile.combine import ChainedGradientTransformation

__all__ = [
    "GradientTransformation",
    "ChainedGradientTransformation",
    "EmptyState",
    "UninitializedState",
    "Tensor",
    "TensorTree",
    "OptionalTensor",
    "ListOfTensors",
    "TupleOfTensors",
    "SequenceOfTensors",
    "TensorOrTensors",
    "Params",
    "Updates",
    "OptState",
    "Scalar",
    "Numeric",
    "Schedule",
    "ScalarOrSchedule",
    "Device",
    "PyTree",
    "ListOfOptionalTensors",
    "TupleOfOptionalTensors",
    "SequenceOfOptionalTensors",
    "OptionalTensorOrOptionalTensors",
    "OptionalTensorTree",
    "TensorContainer",
    "ModuleTensorContainers",
    "Future",
    "LinearSolver",
    "Size",
    "Distribution",
    "SampleFunc",
    "Samplable",
]

Tensor: TypeAlias = torch.Tensor
TensorTree: TypeAlias = Any
OptionalTensor: TypeAlias = torch.Tensor | None
ListOfTensors: TypeAlias = list[torch.Tensor]
TupleOfTensors: TypeAlias = tuple[torch.Tensor, ...]
SequenceOfTensors: TypeAlias = Sequence[torch.Tensor]
TensorOrTensors: TypeAlias = torch.Tensor | Sequence[torch.Tensor]
Params: TypeAlias = TensorTree
Updates: TypeAlias = TensorTree
OptState: TypeAlias = TensorTree
Scalar: TypeAlias = float | int | bool
Numeric: TypeAlias = torch.Tensor | Scalar
Schedule: TypeAlias = Callable[[Numeric], Numeric]
ScalarOrSchedule: TypeAlias = float | Schedule
Device: TypeAlias = torch.device | str | int
ListOfOptionalTensors: TypeAlias = list[OptionalTensor]
TupleOfOptionalTensors: TypeAlias = tuple[OptionalTensor, ...]
SequenceOfOptionalTensors: TypeAlias = Sequence[OptionalTensor]
OptionalTensorOrOptionalTensors: TypeAlias = OptionalTensor | SequenceOfOptionalTensors
OptionalTensorTree: TypeAlias = Any
# One module's ``_parameters`` (or ``_buffers``) dict, and one per (sub)module.
TensorContainer: TypeAlias = dict[str, torch.Tensor | None]
ModuleTensorContainers: TypeAlias = tuple[TensorContainer, ...]
# solver(matvec, b) -> x with matvec(x) = b
LinearSolver: TypeAlias = Callable[[Callable[[TensorTree], TensorTree], TensorTree], TensorTree]
Size = torch.Size
# sample(sample_shape) -> a sample_shape-shaped sample
SampleFunc: TypeAlias = Callable[[Size], torch.Tensor | Sequence[Numeric]]


@runtime_checkable
class Samplable(Protocol):
    """Anything with ``sample(sample_shape)``; ``torch.distributions.Distribution`` is one."""

    @abc.abstractmethod
    def sample(self, sample_shape: Size = Size()) -> torch.Tensor | Sequence[Numeric]:  # noqa: B008
        """A ``sample_shape``-shaped sample (or batch of samples)."""


Samplable.register(Distribution)

if _rpc.is_available():
    from torch.distributed.rpc import RRef

    __all__ += ["RRef"]
else:  # pragma: no cover - torch built without distributed
    RRef = None  # type: ignore[assignment,misc]
