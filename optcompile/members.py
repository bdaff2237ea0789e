"""The parts of a rule transformation: its members and the kinds of hyper-parameter values.

A :class:`Member` is one declared rule with its hyper-parameter values. A value is a number, a
0-d tensor (``requires_grad=True`` gives a hypergradient), a schedule ``count -> value``, or an
:class:`UpdatesStatistic` (a scalar computed from the incoming updates, e.g. a global-norm clip
coefficient). Shared by the user-facing :mod:`optcompile.fused` and the per-step runtime
:mod:`optcompile.fused_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from optcompile.rule import Rule

__all__ = ["Member", "UpdatesStatistic", "is_schedule"]


@dataclass(frozen=True)
class UpdatesStatistic:
    """A hyper-parameter computed from the incoming update tensors at each step.

    Attributes:
        fn: maps the list of update tensors to a 0-d tensor; it is evaluated without gradient
            (the statistic is a constant to autograd, as in TorchOpt's ``clip_grad_norm``).
        description: shown by :func:`optcompile.explain`.
    """

    fn: Callable[[list[torch.Tensor]], torch.Tensor]
    description: str


def is_schedule(value: Any) -> bool:
    """Whether a hyper-parameter value is a schedule (a callable of the step count)."""
    return callable(value) and not isinstance(value, torch.Tensor | UpdatesStatistic)


@dataclass(frozen=True)
class Member:
    """One rule inside a (possibly fused) transformation, with its hyper-parameter values."""

    rule: Rule
    hypers: tuple[tuple[str, Any], ...]
    moment_requires_grad: bool = False
    # The rule's state type, with a step ``count`` when the rule or a schedule needs one.
    state_type: type = field(init=False, compare=False, repr=False)

    def uses_statistic(self) -> bool:
        """Whether a hyper-parameter is computed from the incoming updates."""
        return any(isinstance(v, UpdatesStatistic) for _, v in self.hypers)

    def __post_init__(self) -> None:
        # Computed here, not lazily: a lazy attribute (functools.cached_property takes a lock)
        # cannot be first read inside a traced step, e.g. init() under torch.compile.
        needs_count = bool(self.rule.ir.counts) or any(is_schedule(v) for _, v in self.hypers)
        object.__setattr__(self, "state_type", self.rule.state_type_for(needs_count))
