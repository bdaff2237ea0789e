"""What ``load_state_dict`` accepts: this optimizer's own state, or TorchOpt 0.7.3's.

A state dict is a tuple with one state per parameter group; each group state is the tuple of
the chain members' states (``ScaleByAdamState``, ``TraceState``, ``EmptyState``, ...). A state
is checked against the optimizer's current one (the *template*) member by member and leaf by
leaf, and the first mismatch is named: the member and its class, the field, the leaf and the
shapes.

A TorchOpt state (any state class of the same name that is not optcompile's) is translated:

======================================  ===================================================
TorchOpt 0.7.3                          optcompile
======================================  ===================================================
``ScaleByAdamaxState/RAdamState.t``     ``count = t - 1`` per leaf (``t`` starts at 1)
``ScaleByRssState`` then                one ``ScaleByRssState(sum_of_squares, count)``: the
``ScaleByScheduleState(count)``         lr-decay schedule is fused into AdaGrad's rule
``TraceState(trace)``                   ``count = 1`` per leaf: past the first step (the
                                        first-step flag lives in a TorchOpt closure)
buffers in the params' structure        flat lists (TorchOpt's non-flat chain mode)
``MaskedNode`` leaves                   ``None``
MetaOptimizer leaves (each module's     ``modules()`` order, parameters in definition order
parameters sorted by name)              (``order`` maps one onto the other)
``UninitializedState()``                a freshly initialised state
======================================  ===================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optree
import torch

__all__ = ["adopt_state_groups"]


@dataclass
class _Context:
    order: Sequence[int] | None  # our leaf k is TorchOpt's leaf order[k]
    n_foreign: int | None  # how many leaves a TorchOpt column has (None: as many as ours)


def _is_state(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _describe(state: Any) -> str:
    cls = type(state)
    origin = "" if cls.__module__.startswith("optcompile") else f" (from {cls.__module__})"
    return f"{cls.__name__}({', '.join(state._fields)}){origin}"


def _is_masked_node(value: Any) -> bool:
    return type(value).__name__ == "MaskedNode"


def _column(value: Any) -> list[Any]:
    """The per-leaf entries of a buffer: a flat list, or a tree in the params' structure."""
    leaves = optree.tree_leaves(value, is_leaf=_is_masked_node, none_is_leaf=True)
    return [None if _is_masked_node(v) else v for v in leaves]


def _is_column(value: Any) -> bool:
    if _is_state(value) or not isinstance(value, list | tuple | dict):
        return False
    return all(v is None or isinstance(v, torch.Tensor) for v in _column(value))


def adopt_state_groups(
    current: Sequence[Any],
    new: Any,
    *,
    fresh: Callable[[int], Any],
    orders: Sequence[Sequence[int] | None] | None = None,
    n_foreign: Sequence[int | None] | None = None,
) -> list[Any]:
    """The group states to load: ``new`` itself where it is this optimizer's, else translated.

    Args:
        current: the optimizer's group states now (the templates).
        new: what ``load_state_dict`` was given.
        fresh: ``fresh(i)`` is a newly initialised state of group ``i`` (for TorchOpt's
            ``UninitializedState``).
        orders: per group, where each of our leaves sits among TorchOpt's leaves.
        n_foreign: per group, how many leaves TorchOpt's columns have.

    Raises:
        ValueError: ``new`` is not a state of this optimizer (or TorchOpt's equivalent); the
            message names the group, member, class, field, leaf and shape that differ.
    """
    if not isinstance(new, tuple | list) or _is_state(new) or len(new) != len(current):
        got = f"a {type(new).__name__}"
        if isinstance(new, tuple | list) and not _is_state(new):
            got += f" of length {len(new)}"
        raise ValueError(
            f"state_dict: expected a tuple of {len(current)} group state(s) as returned by "
            f"state_dict(), got {got}"
        )
    adopted = []
    for i, (template, value) in enumerate(zip(current, new, strict=True)):
        if type(value).__name__ == "UninitializedState":
            adopted.append(fresh(i))
            continue
        context = _Context(orders[i] if orders else None, n_foreign[i] if n_foreign else None)
        adopted.append(_adopt(template, value, f"state_dict: group {i}", context))
    return adopted


def _adopt(template: Any, value: Any, where: str, context: _Context) -> Any:
    if _is_state(template):
        return _adopt_state(template, value, where, context, None)
    if isinstance(template, tuple):
        return _adopt_chain(template, value, where, context)
    if _is_column(template):
        return _adopt_column(template, value, where, context, own=True)
    return value


def _adopt_chain(template: tuple, value: Any, where: str, context: _Context) -> Any:
    """A chain's tuple of member states; TorchOpt's AdaGrad has one member more (see above)."""
    if not isinstance(value, tuple) or _is_state(value):
        got = _describe(value) if _is_state(value) else type(value).__name__
        raise ValueError(
            f"{where}: expected a tuple of {len(template)} member states, got a {got} (a state "
            f"of another optimizer?)"
        )
    adopted, j = [], 0
    for k, member in enumerate(template):
        at = f"{where}, member {k}"
        if j >= len(value):
            raise ValueError(f"{at}: missing; this optimizer's is a {_describe(member)}")
        candidate, j = value[j], j + 1
        schedule_count = None
        if (
            _is_state(member)
            and _is_state(candidate)
            and type(candidate) is not type(member)
            and "count" in member._fields
            and "count" not in candidate._fields
            and j < len(value)
            and type(value[j]).__name__ == "ScaleByScheduleState"
        ):
            schedule_count, j = value[j].count, j + 1
        if _is_state(member):
            adopted.append(_adopt_state(member, candidate, at, context, schedule_count))
        else:
            adopted.append(_adopt(member, candidate, at, context))
    if j != len(value):
        extra = ", ".join(_describe(v) if _is_state(v) else type(v).__name__ for v in value[j:])
        raise ValueError(
            f"{where}: {len(value)} member states where this optimizer has {len(template)}; "
            f"unexpected: {extra}"
        )
    if all(a is b for a, b in zip(adopted, value, strict=False)) and len(value) == len(adopted):
        return value  # this optimizer's own state: loaded by reference, as TorchOpt does
    return tuple(adopted)


def _adopt_state(
    template: Any, value: Any, where: str, context: _Context, schedule_count: Any
) -> Any:
    if not _is_state(value):
        raise ValueError(
            f"{where}: this optimizer's state is a {_describe(template)}, the state_dict holds "
            f"a {type(value).__name__}"
        )
    own = type(value) is type(template)
    if not own and type(value).__name__ != type(template).__name__:
        raise ValueError(
            f"{where}: this optimizer's state is a {_describe(template)} but the state_dict "
            f"holds a {_describe(value)} (a state of another optimizer?)"
        )
    fields = []
    for name, field in zip(template._fields, template, strict=True):
        at = f"{where}, {type(template).__name__}.{name}"
        if name in value._fields:
            candidate = getattr(value, name)
        elif name == "count":
            candidate = _foreign_count(value, schedule_count, len(_column(field)), context)
        else:
            raise ValueError(
                f"{at}: missing from the state_dict's {_describe(value)}; this optimizer's "
                f"state is a {_describe(template)}"
            )
        if _is_state(field) or (isinstance(field, tuple) and not _is_column(field)):
            fields.append(_adopt(field, candidate, at, context))
        elif _is_column(field):
            fields.append(_adopt_column(field, candidate, at, context, own=own))
        else:
            fields.append(candidate)
    unknown = set(value._fields) - set(template._fields) - {"t"}
    if unknown:
        raise ValueError(
            f"{where}: the state_dict's {_describe(value)} has field(s) {sorted(unknown)} that "
            f"this optimizer's {_describe(template)} does not"
        )
    if own:
        return (
            value
            if all(a is b for a, b in zip(fields, value, strict=True))
            else type(value)(*fields)
        )
    return type(template)(*fields)


def _foreign_count(value: Any, schedule_count: Any, n_leaves: int, context: _Context) -> Any:
    """The per-leaf ``count`` for a TorchOpt state that keeps its step elsewhere."""
    if "t" in value._fields:  # AdaMax, RAdam: one Python int, 1 before the first step
        return [torch.tensor(int(value.t) - 1, dtype=torch.int64)] * _foreign_leaves(
            n_leaves, context
        )
    if schedule_count is not None:  # AdaGrad: the lr-decay schedule's count
        return schedule_count
    # TraceState: TorchOpt's first-step flag is in the transformation's closure, not the state.
    return [torch.tensor(1, dtype=torch.int64)] * _foreign_leaves(n_leaves, context)


def _foreign_leaves(n_leaves: int, context: _Context) -> int:
    return n_leaves if context.n_foreign is None else context.n_foreign


def _adopt_column(template: Any, value: Any, where: str, context: _Context, own: bool) -> Any:
    ours = _column(template)
    if not isinstance(value, list | tuple | dict) or _is_state(value):
        raise ValueError(
            f"{where}: expected {len(ours)} per-leaf entries, got a {type(value).__name__}"
        )
    theirs = _column(value)
    if not own:
        expected = _foreign_leaves(len(ours), context)
        if len(theirs) != expected:
            raise ValueError(
                f"{where}: {len(theirs)} leaves in the state_dict, but the parameters have "
                f"{expected} (a state of another model?)"
            )
        if context.order is not None:
            theirs = [theirs[j] for j in context.order]
    if len(theirs) != len(ours):
        raise ValueError(
            f"{where}: {len(theirs)} leaves in the state_dict, but this optimizer has "
            f"{len(ours)} (a state of another model?)"
        )
    adopted = []
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if isinstance(a, torch.Tensor):
            if not isinstance(b, torch.Tensor) or a.shape != b.shape:
                got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
                raise ValueError(
                    f"{where}[{k}]: shape {got} in the state_dict, but this optimizer's is "
                    f"{tuple(a.shape)} (a state of another model?)"
                )
            if not own and not a.is_floating_point():  # a step count: ours live on the CPU
                b = b.detach().to(device=a.device, dtype=a.dtype)
        adopted.append(b)
    return value if own else adopted
