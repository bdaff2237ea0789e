"""``meta_unroll``: K ``MetaOptimizer.step`` calls with checkpointing, truncation or no graph.

The object-oriented twin of :func:`optcompile.unroll`: the carry of a checkpointed segment is
the module's trainable parameters (the ones the meta-optimizer updates) and the optimizer's
state; a segment runs its steps under ``torch.no_grad()`` (``MetaOptimizer.step`` then takes a
step without recording a graph) and the outer backward replays them with a graph, one segment
at a time. Recomputation writes into the module and the optimizer, so both are restored after
each replay: the module holds the unroll's final parameters before and after the backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optree
import torch

from optcompile.optim.meta.base import MetaOptimizer, _current
from optcompile.segment import run_segment
from optcompile.unrolling import (
    _batches,
    _check_meta,
    _check_truncate,
    _grad_leaves,
    resolve_options,
    segment_length,
)

__all__ = ["meta_unroll"]

LossFn = Callable[[Any], torch.Tensor]


def meta_unroll(
    optimizer: MetaOptimizer,
    loss_fn: LossFn,
    batches: Iterable[Any] | int,
    *,
    checkpoint_every: int | str | None = None,
    truncate: int | None = None,
    meta: Sequence[torch.Tensor] = (),
) -> None:
    """Run ``optimizer.step(loss_fn(batch))`` for every batch, memory-bounded.

    Args:
        optimizer: a :class:`~optcompile.MetaOptimizer` (``MetaAdam(net, ...)``, ...).
        loss_fn: the inner loss of one batch, computed from the optimizer's module as it is
            when called (e.g. ``lambda b: F.mse_loss(net(b[0]), b[1])``). With checkpointing it
            runs twice per step and must compute the same thing both times.
        batches: one batch per step, or an int K (``loss_fn`` receives the step index).
        checkpoint_every: as in :func:`optcompile.unroll`: ``None``, an int >= 1 or ``"sqrt"``.
        truncate: as in :func:`optcompile.unroll`: differentiate the last ``truncate`` steps.
        meta: tensors ``loss_fn`` or the optimizer's transformation read that need gradients
            and are not the module's trainable parameters (a learnable learning rate).

    Under ``torch.no_grad()`` every step is graph-free (evaluation). Afterwards the module holds
    the final parameters and ``optimizer.state_groups`` the final state, as after K plain
    ``step`` calls; the outer backward gives the same meta-gradient as those K calls.

    Raises:
        TypeError: ``optimizer`` is not a MetaOptimizer, or an option of a wrong type.
        ValueError: ``checkpoint_every`` < 1 or unknown, ``truncate`` < 1 or > K.
    """
    if not isinstance(optimizer, MetaOptimizer):
        raise TypeError(f"optimizer must be a MetaOptimizer, got {type(optimizer).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    checkpoint_every, truncate = resolve_options(checkpoint_every, truncate)
    steps = _batches(batches)
    n_diff = _check_truncate(truncate, len(steps))
    k = segment_length(checkpoint_every, n_diff)
    meta = _check_meta(meta)
    if not torch.is_grad_enabled():
        _graph_free(optimizer, loss_fn, steps)
        return
    n_free = len(steps) - n_diff
    with torch.no_grad():
        _graph_free(optimizer, loss_fn, steps[:n_free])
    tail = steps[n_free:]
    if k is None:
        for batch in tail:
            optimizer.step(loss_fn(batch))
        return
    for start in range(0, len(tail), k):
        _checkpointed(optimizer, loss_fn, tail[start : start + k], meta)


def _graph_free(optimizer: MetaOptimizer, loss_fn: LossFn, batches: list[Any]) -> None:
    """Steps that record no graph: the loss is built with grad, the step taken without."""
    for batch in batches:
        with torch.enable_grad():
            loss = loss_fn(batch)
        optimizer.step(loss)


def _read(optimizer: MetaOptimizer) -> tuple[list[torch.Tensor], list[Any]]:
    """The carry tensors (every group's parameters, then its state's tensors) and the rest."""
    params = [t for slots in optimizer.param_slots_groups for t in _current(slots)]
    leaves, spec = optree.tree_flatten(list(optimizer.state_groups), none_is_leaf=True)
    return params + [t for t in leaves if isinstance(t, torch.Tensor)], [spec, leaves]


def _write(optimizer: MetaOptimizer, carry: Sequence[torch.Tensor], layout: list[Any]) -> None:
    spec, leaves = layout
    values = iter(carry)
    for slots in optimizer.param_slots_groups:
        for places in slots:
            value = next(values)
            for container, name in places:
                container[name] = value
    full = [next(values) if isinstance(t, torch.Tensor) else t for t in leaves]
    optimizer.state_groups[:] = optree.tree_unflatten(spec, full)


def _checkpointed(
    optimizer: MetaOptimizer, loss_fn: LossFn, batches: list[Any], meta: list[torch.Tensor]
) -> None:
    carry, layout = _read(optimizer)

    def runner(carry_in: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        before, before_layout = _read(optimizer)
        if not torch.is_grad_enabled():  # the forward pass: leaves, so steps can take grads
            carry_in = tuple(
                t.detach().requires_grad_(t.requires_grad and t.is_floating_point())
                for t in carry_in
            )
        _write(optimizer, carry_in, layout)
        try:
            if torch.is_grad_enabled():
                for batch in batches:
                    optimizer.step(loss_fn(batch))
            else:
                _graph_free(optimizer, loss_fn, batches)
            return tuple(_read(optimizer)[0])
        finally:  # a replay in backward must leave the module as the unroll left it
            _write(optimizer, before, before_layout)

    extras = [*_grad_leaves(batches), *meta]
    _write(optimizer, run_segment(runner, carry, extras), layout)
