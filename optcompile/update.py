"""``apply_updates``: add the updates a transformation returned to the parameters."""

from __future__ import annotations

from typing import Any

import optree
import torch

__all__ = ["apply_updates", "apply_transform"]


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


def apply_transform(
    tx: Any, updates: Any, state: Any, params: Any, *, inplace: bool = True
) -> tuple[Any, Any]:
    """``tx.update`` followed by :func:`apply_updates`: returns ``(new_params, new_state)``.

    Rule-based transformations add the update inside their last fused kernel, saving a pass
    over the parameters; any other transformation runs ``update`` then ``apply_updates``.
    """
    fused = getattr(tx, "update_and_apply", None)
    if fused is not None:
        return fused(updates, state, params=params, inplace=inplace)
    new_updates, new_state = tx.update(updates, state, params=params, inplace=inplace)
    return apply_updates(params, new_updates, inplace=inplace), new_state
