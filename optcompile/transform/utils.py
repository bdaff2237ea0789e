"""Leafwise helpers of hand-written transforms, at TorchOpt's path ``transform.utils``.

optcompile's own transforms are rules and need none of these; they are here for user code
written against TorchOpt's helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optree
import torch

__all__ = ["tree_map_flat", "tree_map_flat_", "inc_count", "update_moment"]

INT64_MAX = torch.iinfo(torch.int64).max


def _check_lengths(flat_arg: Sequence[Any], flat_args: tuple[Sequence[Any], ...]) -> None:
    for k, other in enumerate(flat_args, start=1):
        if len(other) != len(flat_arg):
            raise ValueError(
                f"flat_args[{k - 1}] has {len(other)} entries but flat_arg has {len(flat_arg)}"
            )


def tree_map_flat(
    func: Callable, flat_arg: Sequence[Any], *flat_args: Any, none_is_leaf: bool = False
) -> Sequence[Any]:
    """``[func(x, *xs) for x, *xs in zip(flat_arg, *flat_args)]``, in ``flat_arg``'s type.

    ``None`` entries of ``flat_arg`` stay ``None`` unless ``none_is_leaf``.
    """
    _check_lengths(flat_arg, flat_args)
    out = [
        x if x is None and not none_is_leaf else func(x, *xs)
        for x, *xs in zip(flat_arg, *flat_args, strict=True)
    ]
    return type(flat_arg)(out) if isinstance(flat_arg, tuple) else out


def tree_map_flat_(
    func: Callable, flat_arg: Sequence[Any], *flat_args: Any, none_is_leaf: bool = False
) -> Sequence[Any]:
    """:func:`tree_map_flat` for in-place ``func``: returns ``flat_arg`` itself."""
    tree_map_flat(func, flat_arg, *flat_args, none_is_leaf=none_is_leaf)
    return flat_arg


def _inc(c: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return c + (c != INT64_MAX).to(torch.int64) if g is not None else c


def inc_count(updates: Any, count: Any) -> Any:
    """Each counter plus one where its update is not None, saturating at ``INT64_MAX``."""
    return optree.tree_map(_inc, count, updates, none_is_leaf=True)


def _moment_fn(decay: float, order: int, inplace: bool) -> Callable:
    if order not in (1, 2):
        raise ValueError(f"order={order!r} must be 1 or 2")
    weight = 1.0 if decay == 1.0 else 1 - decay

    def f(g: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        if g is None:
            return t
        if inplace:
            t = t.mul_(decay) if decay != 1.0 else t
            return t.addcmul_(g, g, value=weight) if order == 2 else t.add_(g, alpha=weight)
        scaled = t * decay if decay != 1.0 else t
        return scaled.addcmul(g, g, value=weight) if order == 2 else scaled.add(g, alpha=weight)

    return f


def update_moment(
    updates: Any, moments: Any, decay: float, *, order: int, inplace: bool = True
) -> Any:
    r"""The exponential moving average of the ``order``-th moment, leafwise.

    .. math:: m \leftarrow \beta m + (1 - \beta) g^{k}, \quad k = \text{order}
        \qquad (m \leftarrow m + g^k \text{ when } \beta = 1)

    Raises:
        ValueError: ``order`` is not 1 or 2.
    """
    return optree.tree_map(_moment_fn(decay, order, inplace), updates, moments, none_is_leaf=True)


tree_map_flat.flat = tree_map_flat  # type: ignore[attr-defined]
inc_count.flat = inc_count  # type: ignore[attr-defined]
update_moment.flat = update_moment  # type: ignore[attr-defined]
