"""``Optimizer``: a ``torch.optim``-style object around a GradientTransformation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optree
import torch

from optcompile.base import GradientTransformation
from optcompile.optim.checkpoint import adopt_state_groups
from optcompile.update import apply_updates

__all__ = ["Optimizer"]


def _check_impl(impl: Any) -> GradientTransformation:
    if not isinstance(impl, GradientTransformation):
        raise TypeError(
            f"impl must be a GradientTransformation (e.g. optcompile.adam()), got "
            f"{type(impl).__name__}"
        )
    return impl


class Optimizer:
    """A classic (non-differentiable) optimizer: ``zero_grad()``, ``loss.backward()``, ``step()``.

    Args:
        params: an iterable of tensors (one parameter group).
        impl: the transformation that turns gradients into updates.

    Attributes:
        param_groups: one tuple of tensors per group.
        state_groups: one transformation state per group.
    """

    def __init__(self, params: Iterable[torch.Tensor], impl: GradientTransformation) -> None:
        self.impl = _check_impl(impl)
        self.param_groups: list[tuple[torch.Tensor, ...]] = []
        self.param_treespecs: list[Any] = []
        self.state_groups: list[Any] = []
        self.add_param_group(params)

    def add_param_group(self, params: Iterable[torch.Tensor]) -> None:
        """Add a group of parameters, with a freshly initialised state."""
        if isinstance(params, torch.Tensor):
            raise TypeError("params must be an iterable of tensors, got a single tensor")
        if isinstance(params, torch.nn.Module):
            raise TypeError(
                f"params must be an iterable of tensors, got the module {type(params).__name__}; "
                f"pass module.parameters()"
            )
        flat, spec = optree.tree_flatten(tuple(params))
        for i, p in enumerate(flat):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params[{i}] is {type(p).__name__}, expected a tensor")
        group = tuple(flat)
        self.param_groups.append(group)
        self.param_treespecs.append(spec)
        self.state_groups.append(self.impl.init(group))

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Reset the gradients of all parameters (to zero, or to None)."""
        for group in self.param_groups:
            for p in group:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Update the parameters in place from their ``.grad``; return ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, (group, state) in enumerate(zip(self.param_groups, self.state_groups, strict=True)):
            grads = tuple(p.grad for p in group)
            updates, self.state_groups[i] = self.impl.update(
                grads, state, params=group, inplace=True
            )
            apply_updates(group, updates, inplace=True)
        return loss

    def state_dict(self) -> tuple[Any, ...]:
        """The state of every group (references, not copies)."""
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[Any]) -> None:
        """Replace the group states with ``state_dict``: by reference if it is this optimizer's.

        A TorchOpt 0.7.3 state dict of the same optimizer is translated (see
        :mod:`optcompile.optim.checkpoint`) and training continues with TorchOpt's numbers.

        Raises:
            ValueError: ``state_dict`` is not a state of this optimizer; the message names the
                group, member, state class, field, leaf and shape that differ. Nothing changes.
        """
        self.state_groups[:] = adopt_state_groups(
            self.state_groups, state_dict, fresh=lambda i: self.impl.init(self.param_groups[i])
        )
