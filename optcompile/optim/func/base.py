"""``FuncOptimizer``: differentiable steps on explicit parameter tensors (functional style)."""

from __future__ import annotations

from typing import Any

import optree
import torch

from optcompile.base import GradientTransformation, UninitializedState
from optcompile.optim.base import _check_impl
from optcompile.optim.checkpoint import adopt_state_groups
from optcompile.settings import first_order_active
from optcompile.update import apply_transform

__all__ = ["FuncOptimizer"]


class FuncOptimizer:
    """``new_params = opt.step(loss, params)`` with the state kept inside the object.

    Args:
        impl: the transformation.
        inplace: update in place (not differentiable); the default False keeps the graph.
    """

    def __init__(self, impl: GradientTransformation, *, inplace: bool = False) -> None:
        self.impl = _check_impl(impl)
        self.inplace = bool(inplace)
        self.optim_state: Any = UninitializedState()
        self._unchecked = False  # loaded before the first step: checked against init(params)

    def step(self, loss: torch.Tensor, params: Any, inplace: bool | None = None) -> Any:
        """Differentiate ``loss`` w.r.t. ``params`` and return the updated parameters.

        ``params`` is a tensor or any pytree of tensors (tuple, list, dict); the result has the
        same structure.
        """
        inplace = self.inplace if inplace is None else inplace
        leaves, spec = optree.tree_flatten(params)
        if not leaves or not all(isinstance(p, torch.Tensor) for p in leaves):
            raise TypeError(
                f"params must be a tensor or a pytree of tensors, got {type(params).__name__} "
                f"with leaves {[type(p).__name__ for p in leaves]}"
            )
        flat = tuple(leaves)
        if isinstance(self.optim_state, UninitializedState):
            self.optim_state = self.impl.init(flat)
        elif self._unchecked:
            (self.optim_state,) = adopt_state_groups(
                (self.impl.init(flat),), (self.optim_state,), fresh=lambda _: self.impl.init(flat)
            )
            self._unchecked = False
        create_graph = not inplace and not first_order_active()
        grads = torch.autograd.grad(loss, flat, create_graph=create_graph, allow_unused=True)
        new_params, self.optim_state = apply_transform(
            self.impl, grads, self.optim_state, flat, inplace=inplace
        )
        return optree.tree_unflatten(spec, list(new_params))

    def state_dict(self) -> Any:
        """The transformation state."""
        return self.optim_state

    def load_state_dict(self, state_dict: Any) -> None:
        """Replace the transformation state, checked against this transformation's.

        A TorchOpt 0.7.3 state of the same transformation is translated (see
        :mod:`optcompile.optim.checkpoint`).

        Raises:
            ValueError: ``state_dict`` is not a state of this transformation.
        """
        if isinstance(self.optim_state, UninitializedState) or self._unchecked:
            # No parameters seen yet: checked (and translated) at the first step.
            self.optim_state, self._unchecked = state_dict, True
            return
        (self.optim_state,) = adopt_state_groups(
            (self.optim_state,), (state_dict,), fresh=lambda _: UninitializedState()
        )
