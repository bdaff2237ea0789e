"""Type aliases, as ``torchopt.typing`` (for annotations in user code)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch

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
