"""``apply_updates``: add the updates a transformation returned to the parameters."""

from __future__ import annotations

from typing import Any

import optree
import torch

__all__ = ["apply_updates"]


def apply_updates(params: Any, updates: Any, *, inplace: bool = True) -> Any:
    """Return ``params + updates`` leafwise; ``None`` updates leave their parameter unchanged.

    Args:
        params: a pytree of tensors.
        updates: a pytree of the same structure (``None`` leaves allowed).
        inplace: add into the parameters' storage without recording autograd history (classic
            training); when False, build new tensors so the step is differentiable.
    """

    def add(p: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        if u is None:
            return p
        if inplace:
            with torch.no_grad():
                return p.add_(u)
        return p.add(u)

    return optree.tree_map(add, params, updates, none_is_leaf=True)
