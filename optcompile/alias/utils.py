"""The pieces every alias shares, at TorchOpt's path ``alias.utils``.

``flip_sign_and_add_weight_decay`` (before the preconditioner) and ``scale_by_neg_lr`` (last)
are rules, so they fuse with the preconditioner between them. The *chain-flat switch*
(``_set_use_chain_flat``, a testing hook in TorchOpt) decides the layout of an alias's state:

- on (the default): the state's buffers are lists with one entry per parameter leaf, e.g.
  ``ScaleByAdamState(mu=[t1, t2], ...)``, TorchOpt's ``chain_flat`` layout;
- off: each buffer has the structure of the params, e.g. ``mu=(t1, t2)`` for a tuple of params.

The numbers are the same either way; only where the tensors sit in the state differs.
"""

from __future__ import annotations

import threading
from typing import Any

import optree
import torch

from optcompile.base import GradientTransformation, identity
from optcompile.fused import from_rule
from optcompile.rules.basic import flip_sign_and_add_weight_decay as _flip_rule
from optcompile.rules.basic import scale_by_neg_lr as _neg_lr_rule

__all__ = ["flip_sign_and_add_weight_decay", "scale_by_neg_lr"]

_lock = threading.Lock()
_use_chain_flat = True


def _set_use_chain_flat(use_chain_flat: bool) -> None:
    """Aliases built from now on keep flat (True) or params-shaped (False) states."""
    global _use_chain_flat
    if not isinstance(use_chain_flat, bool):
        raise TypeError(f"use_chain_flat={use_chain_flat!r} must be a bool")
    with _lock:
        _use_chain_flat = use_chain_flat


def _get_use_chain_flat() -> bool:
    """The current setting of :func:`_set_use_chain_flat`."""
    with _lock:
        return _use_chain_flat


def _flip_and_decay(weight_decay: Any, maximize: bool, backend: str | None) -> Any:
    if isinstance(weight_decay, int | float) and weight_decay == 0 and not maximize:
        return None
    return from_rule(
        _flip_rule, weight_decay=weight_decay, sign=-1.0 if maximize else 1.0, backend=backend
    )


def _neg_lr(lr: Any, backend: str | None) -> Any:
    return from_rule(_neg_lr_rule, lr=lr, backend=backend)


def flip_sign_and_add_weight_decay(
    weight_decay: float = 0.0, maximize: bool = False
) -> GradientTransformation:
    r"""L2 weight decay and gradient ascent: :math:`u = s g + \lambda p`, :math:`s = -1` if
    ``maximize`` else 1; the identity when ``weight_decay == 0`` and not ``maximize``.

    Raises:
        HyperparameterError: ``weight_decay`` is negative.
    """
    tx = _flip_and_decay(weight_decay, maximize, None)
    return identity() if tx is None else tx


def scale_by_neg_lr(lr: Any) -> GradientTransformation:
    r"""The last member of every alias: :math:`u = -\eta g` (``lr`` a number, tensor or schedule).

    Raises:
        HyperparameterError: ``lr`` is negative.
    """
    return _neg_lr(lr, None)


# TorchOpt's variants for already-flattened updates: ours take any pytree, a list included.
flip_sign_and_add_weight_decay.flat = flip_sign_and_add_weight_decay  # type: ignore[attr-defined]
scale_by_neg_lr.flat = scale_by_neg_lr  # type: ignore[attr-defined]


def _is_state(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _map_buffers(state: Any, n_leaves: int, convert: Any) -> Any:
    """Apply ``convert`` to every per-leaf buffer (a sequence of ``n_leaves``) of ``state``."""
    if _is_buffer(state, n_leaves):
        return convert(state)
    if _is_state(state):
        return type(state)(*(_map_buffers(v, n_leaves, convert) for v in state))
    if isinstance(state, tuple):
        return tuple(_map_buffers(v, n_leaves, convert) for v in state)
    return state


def _is_buffer(value: Any, n_leaves: int) -> bool:
    return (
        isinstance(value, list | tuple)
        and not _is_state(value)
        and len(value) == n_leaves
        and all(v is None or isinstance(v, torch.Tensor) for v in value)
    )


def params_shaped(tx: GradientTransformation) -> GradientTransformation:
    """``tx`` with its state buffers in the params' structure instead of flat lists.

    What an alias returns while :func:`_set_use_chain_flat` is off (TorchOpt's non-flat chain).
    """

    def to_tree(spec: Any) -> Any:
        return lambda column: optree.tree_unflatten(spec, list(column))

    def init(params: Any) -> Any:
        leaves, spec = optree.tree_flatten(params, none_is_leaf=True)
        return _map_buffers(tx.init(params), len(leaves), to_tree(spec))

    def update(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        leaves, spec = optree.tree_flatten(updates, none_is_leaf=True)
        n = len(leaves)

        def to_list(column: Any) -> list:
            return spec.flatten_up_to(column) if not isinstance(column, list) else column

        flat_state = _map_buffers_tree(state, spec, to_list)
        new_updates, new_state = tx.update(updates, flat_state, params=params, inplace=inplace)
        return new_updates, _map_buffers(new_state, n, to_tree(spec))

    return GradientTransformation(init, update)


def _map_buffers_tree(state: Any, spec: Any, convert: Any) -> Any:
    """Flatten every params-shaped buffer of ``state`` back to a list of leaves."""
    if _is_state(state):
        fields = []
        for v in state:
            if _is_state(v):
                fields.append(_map_buffers_tree(v, spec, convert))
            elif optree.tree_structure(v, none_is_leaf=True) == spec:
                fields.append(convert(v))
            else:
                fields.append(_map_buffers_tree(v, spec, convert) if isinstance(v, tuple) else v)
        return type(state)(*fields)
    if isinstance(state, tuple):
        return tuple(_map_buffers_tree(v, spec, convert) for v in state)
    return state
