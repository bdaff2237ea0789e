"""The building blocks of an optimizer's declaration: the chains every alias is made of.

Every alias is ``[sign flip / L2 decay] -> preconditioner rule(s) -> [decoupled decay] -> -lr``;
:func:`preconditioned` builds that shape, :func:`chain_of` any other. Adjacent rules fuse into one
kernel. The chain-flat switch (TorchOpt's ``alias.utils._set_use_chain_flat``) and the
params-shaped state layout live here too, since every chain built here honours them.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import optree
import torch

from optcompile.base import EmptyState, GradientTransformation
from optcompile.combine import ChainedGradientTransformation
from optcompile.fused import from_rule
from optcompile.masking import masked
from optcompile.rules.basic import add_decayed_weights as _decay_rule
from optcompile.rules.basic import flip_sign_and_add_weight_decay as _flip_rule
from optcompile.rules.basic import scale_by_neg_lr as _neg_lr_rule

__all__ = [
    "chain_of",
    "preconditioned",
    "flip_and_decay",
    "neg_lr",
    "decoupled_decay",
    "accelerated",
    "is_zero",
    "params_shaped",
    "straight_through_sign",
]

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


def flip_and_decay(weight_decay: Any, maximize: bool, backend: str | None) -> Any:
    if isinstance(weight_decay, int | float) and weight_decay == 0 and not maximize:
        return None
    return from_rule(
        _flip_rule, weight_decay=weight_decay, sign=-1.0 if maximize else 1.0, backend=backend
    )


def neg_lr(lr: Any, backend: str | None) -> Any:
    return from_rule(_neg_lr_rule, lr=lr, backend=backend)


def is_zero(value: Any) -> bool:
    """Whether ``value`` is the plain number 0 (a tensor or schedule never is: it may change)."""
    return isinstance(value, numbers.Real) and value == 0


def chain_of(*members: GradientTransformation | None) -> GradientTransformation:
    """The alias chain of ``members`` (None members skipped), in the current state layout.

    Always a chain (even of one member): TorchOpt's aliases have tuple states, which the seed
    prints as ``((EmptyState(),),)`` for MetaSGD. With the chain-flat switch off the state's
    buffers take the params' structure (:func:`params_shaped`).
    """
    chained = ChainedGradientTransformation(*(m for m in members if m is not None), opaque=True)
    return chained if _get_use_chain_flat() else params_shaped(chained)


def decoupled_decay(weight_decay: Any, mask: Any, backend: str | None) -> Any:
    r"""Decoupled weight decay :math:`u = g + \lambda p` (None when it is the identity).

    ``mask`` (a pytree of bools like the params, or a callable params -> such a tree) limits the
    decay to the leaves where it is True.
    """
    if mask is None and is_zero(weight_decay):
        return None
    tx = from_rule(_decay_rule, weight_decay=weight_decay, backend=backend)
    return tx if mask is None else masked(tx, mask)


def preconditioned(
    rule: Any,
    *,
    lr: Any,
    weight_decay: Any,
    maximize: bool = False,
    backend: str | None,
    rule_backend: str | None = None,
    decoupled: bool = False,
    mask: Any = None,
    moment_requires_grad: bool = False,
    **hypers: Any,
) -> GradientTransformation:
    r"""The shape of every adaptive alias: sign flip / L2 decay -> ``rule`` -> decay -> -lr.

    .. math:: \Delta p = -\eta\,(\mathrm{rule}(s g + \lambda_{L2} p) + \lambda_{dec} p)

    Args:
        rule: the preconditioner rule; ``hypers`` are its hyper-parameter values.
        lr: the learning rate (number, 0-d tensor or schedule).
        weight_decay: L2 decay added to the gradient, or decoupled decay when ``decoupled``.
        maximize: ascend instead of descend (the gradient's sign flipped first).
        backend: the backend of every member.
        rule_backend: the backend of the rule and the -lr scaling that fuses with it (default
            ``backend``), e.g. the native kernel.
        decoupled: AdamW-style decay after the rule instead of L2 decay before it.
        mask: with ``decoupled``, which leaves are decayed (see :func:`decoupled_decay`).
        moment_requires_grad: create the rule's state with ``requires_grad=True``.
    """
    rule_backend = backend if rule_backend is None else rule_backend
    decay = decoupled_decay(weight_decay, mask, backend) if decoupled else None
    return chain_of(
        flip_and_decay(0.0 if decoupled else weight_decay, maximize, backend),
        from_rule(rule, backend=rule_backend, moment_requires_grad=moment_requires_grad, **hypers),
        decay,
        neg_lr(lr, backend if decay is not None else rule_backend),
    )


class _StraightThroughSign(torch.autograd.Function):
    """``sign(x)`` forward, the identity backward (and in forward mode)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:
        return tangent


def straight_through_sign() -> GradientTransformation:
    r"""The sign of the updates, differentiated as the identity (straight-through estimator).

    .. math:: u = \operatorname{sign}(x), \qquad
        \frac{\partial u}{\partial x} := 1 \text{ (instead of 0 almost everywhere)}

    The sign's true derivative is 0 wherever it exists, so a meta-gradient through a sign-based
    optimizer (Lion, sign SGD) w.r.t. the data vanishes. This transformation keeps the sign's
    value and passes the cotangent through unchanged (Bengio et al., 2013). It is plain torch
    (not a rule): it splits the fused kernel of a chain in two.
    """

    def init(params: Any) -> Any:
        return EmptyState()

    def update(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        def sign(x: torch.Tensor) -> torch.Tensor:
            if x is None:
                return x
            if inplace and not x.requires_grad:
                return x.sign_()
            return _StraightThroughSign.apply(x)

        return optree.tree_map(sign, updates, none_is_leaf=True), state

    return GradientTransformation(init, update)


def accelerated(use_accelerated_op: bool, backend: str | None) -> str | None:
    """``use_accelerated_op=True`` puts a rule's kernel on the native backend.

    The members around it keep ``backend``: the native kernel covers Adam (times -lr) only, so
    weight decay or a sign flip run as their own fused unit.
    """
    if use_accelerated_op and backend is None:
        return "native"
    return backend


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
