"""``MetaOptimizer``: differentiable steps on an ``nn.Module``, for bilevel optimisation.

``step(loss)`` differentiates the loss with ``create_graph=True``, runs the fused rule without
in-place updates, and writes the new, graph-carrying tensors back into the module's
``_parameters`` dicts. An outer ``backward()`` then flows through every inner step into the
meta-parameters (and, with ``moment_requires_grad``, into the initial moments).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from optcompile.base import GradientTransformation
from optcompile.decorator import first_order_active
from optcompile.distributed.ddp_guard import check_not_ddp_wrapped
from optcompile.optim.base import _check_impl, _check_state_groups
from optcompile.update import apply_transform

__all__ = ["MetaOptimizer"]


Slot = tuple[tuple[dict, str], ...]  # every (container, name) that holds one parameter


def _trainable_slots(module: nn.Module) -> tuple[Slot, ...]:
    """One slot per distinct parameter that requires grad, in ``modules()`` order.

    A tied parameter (the same tensor in two places, e.g. shared embedding and output weights)
    is one parameter: one gradient, one state, one update, written back to every place.
    """
    slots: dict[int, list[tuple[dict, str]]] = {}
    for submodule in module.modules():
        container = submodule._parameters
        for name, value in container.items():
            if value is not None and value.requires_grad:
                slots.setdefault(id(value), []).append((container, name))
    return tuple(tuple(places) for places in slots.values())


def _current(slots: tuple[Slot, ...]) -> tuple[torch.Tensor, ...]:
    """The parameters the slots hold now (the first place of each)."""
    return tuple(places[0][0][places[0][1]] for places in slots)


class MetaOptimizer:
    """A differentiable optimizer over a module's parameters.

    Args:
        module: the network whose parameters the inner loop updates.
        impl: the transformation (e.g. ``optcompile.sgd(lr=1.0)``).

    Attributes:
        param_containers_groups: per group, the ``_parameters`` dicts it writes into.
        state_groups: per group, the transformation's state.
    """

    def __init__(self, module: nn.Module, impl: GradientTransformation) -> None:
        self.impl = _check_impl(impl)
        self.param_slots_groups: list[tuple[Slot, ...]] = []
        self.state_groups: list[Any] = []
        self.add_param_group(module)

    @property
    def param_containers_groups(self) -> list[tuple[dict, ...]]:
        unique = []
        for slots in self.param_slots_groups:
            seen: dict[int, dict] = {}
            for places in slots:
                for container, _ in places:
                    seen.setdefault(id(container), container)
            unique.append(tuple(seen.values()))
        return unique

    def add_param_group(self, module: nn.Module) -> None:
        """Add the trainable parameters of ``module`` as a new group."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        check_not_ddp_wrapped(module)  # the inner loop on ddp.module would never be synced
        slots = _trainable_slots(module)
        if not slots:
            raise ValueError(
                f"module {type(module).__name__} has no parameter that requires grad; a "
                f"MetaOptimizer needs at least one"
            )
        self.param_slots_groups.append(slots)
        self.state_groups.append(self.impl.init(_current(slots)))

    def step(self, loss: torch.Tensor) -> None:
        """One differentiable update of every group from ``loss``.

        Raises:
            ValueError: ``loss`` is not a scalar tensor that requires grad (the module is left
                unchanged).
        """
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss must be a scalar tensor, got {shape}; reduce it first (e.g. loss.mean())"
            )
        if not loss.requires_grad:
            raise ValueError(
                "loss does not require grad: it was computed without the module's parameters "
                "or under torch.no_grad()"
            )
        create_graph = not first_order_active()
        new_groups, all_grads = [], []
        for slots, state in zip(self.param_slots_groups, self.state_groups, strict=True):
            params = _current(slots)
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    loss, params, create_graph=create_graph, allow_unused=True, retain_graph=True
                )
                all_grads.append(grads)
                new_params, new_state = apply_transform(
                    self.impl, grads, state, params, inplace=False
                )
            new_groups.append((slots, new_params, new_state))
        if all(g is None for grads in all_grads for g in grads):
            raise ValueError(
                "loss does not depend on any parameter this optimizer updates: it was computed "
                "before the last step (compute it again from the module), or without the module"
            )
        for i, (slots, new_params, new_state) in enumerate(new_groups):
            self.state_groups[i] = new_state
            for places, value in zip(slots, new_params, strict=True):
                for container, name in places:
                    container[name] = value

    def state_dict(self) -> tuple[Any, ...]:
        """The state of every group (the live objects, not copies)."""
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[Any]) -> None:
        """Replace the group states (by reference).

        Raises:
            ValueError: ``state_dict`` does not have this optimizer's structure.
        """
        _check_state_groups(self.state_groups, state_dict)
        self.state_groups[:] = list(state_dict)
