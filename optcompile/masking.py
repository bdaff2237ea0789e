"""``masked``: apply a transformation to the leaves a boolean mask selects, pass the others through.

Not a rule: the mask decides *which* leaves a rule sees. Re-exported by :mod:`optcompile.transform`
(TorchOpt's path); it lives here so that an optimizer's declaration can use it without importing
the ``transform`` namespace.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree

from optcompile.base import GradientTransformation

__all__ = ["MaskedState", "masked"]


class MaskedState(NamedTuple):
    """The state of :func:`masked`: the inner transformation's state on the selected leaves."""

    inner_state: Any


MaskedState.__module__ = "optcompile.transform"  # its public path (and pickled name) since 0.1


def masked(inner: GradientTransformation, mask: Any = None) -> GradientTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is True; others pass through unchanged.

    Args:
        inner: the transformation to restrict.
        mask: a pytree of bools with the params' structure, or a callable ``params -> mask``;
            None (TorchOpt's default) selects every leaf, so ``masked(inner)`` is ``inner``
            with a ``MaskedState`` around its state.
    """

    def select(tree: Any, mask_tree: Any) -> Any:
        return optree.tree_map(
            lambda leaf, keep: leaf if keep else None, tree, mask_tree, none_is_leaf=True
        )

    def resolve(params: Any) -> Any:
        if mask is None:
            return optree.tree_map(lambda _: True, params, none_is_leaf=True)
        return mask(params) if callable(mask) else mask

    def init(params: Any) -> MaskedState:
        return MaskedState(inner.init(select(params, resolve(params))))

    def update(
        updates: Any, state: MaskedState, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, MaskedState]:
        if not isinstance(state, MaskedState):
            raise ValueError(f"state: expected a MaskedState, got {type(state).__name__}")
        mask_tree = resolve(params if params is not None else updates)
        inner_updates, inner_state = inner.update(
            select(updates, mask_tree),
            state.inner_state,
            params=None if params is None else select(params, mask_tree),
            inplace=inplace,
        )
        merged = optree.tree_map(
            lambda new, old, keep: new if keep else old,
            inner_updates,
            updates,
            mask_tree,
            none_is_leaf=True,
        )
        return merged, MaskedState(inner_state)

    return GradientTransformation(init, update)
