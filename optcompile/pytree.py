"""Pytree helpers, as ``torchopt.pytree``: everything of optree, plus leafwise arithmetic.

optcompile flattens with optree, like TorchOpt; ``None`` leaves vanish (``none_is_leaf=False``)
unless a function says otherwise.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import optree
import torch
from optree import *  # noqa: F403 - the whole optree API, as TorchOpt re-exports it

from optcompile.distributed.tree import tree_as_rref, tree_to_here, tree_wait

__all__ = [
    *optree.__all__,
    "tree_flatten_as_tuple",
    "tree_pos",
    "tree_neg",
    "tree_add",
    "tree_add_scalar_mul",
    "tree_sub",
    "tree_sub_scalar_mul",
    "tree_mul",
    "tree_matmul",
    "tree_scalar_mul",
    "tree_truediv",
    "tree_vdot_real",
    "tree_wait",
    "tree_as_rref",
    "tree_to_here",
]


def tree_flatten_as_tuple(
    tree: Any,
    is_leaf: Callable[[Any], bool] | None = None,
    *,
    none_is_leaf: bool = False,
    namespace: str = "",
) -> tuple[tuple[Any, ...], optree.PyTreeSpec]:
    """``tree_flatten`` (same options) with the leaves as a tuple."""
    leaves, spec = optree.tree_flatten(
        tree, is_leaf, none_is_leaf=none_is_leaf, namespace=namespace
    )
    return tuple(leaves), spec


def tree_pos(tree: Any) -> Any:
    """``+x`` leafwise."""
    return optree.tree_map(operator.pos, tree)


def tree_neg(tree: Any) -> Any:
    """``-x`` leafwise."""
    return optree.tree_map(operator.neg, tree)


def tree_add(*trees: Any) -> Any:
    """The leafwise sum of trees of the same structure."""
    return optree.tree_map(lambda *xs: functools.reduce(operator.add, xs), *trees)


def tree_add_scalar_mul(tree_x: Any, tree_y: Any, alpha: Any = None) -> Any:
    """``x + alpha * y`` leafwise (``x + y`` when ``alpha`` is None)."""
    if alpha is None:
        return tree_add(tree_x, tree_y)
    return optree.tree_map(lambda x, y: x + alpha * y, tree_x, tree_y)


def tree_sub(minuend_tree: Any, subtrahend_tree: Any) -> Any:
    """``x - y`` leafwise."""
    return optree.tree_map(operator.sub, minuend_tree, subtrahend_tree)


def tree_sub_scalar_mul(tree_x: Any, tree_y: Any, alpha: Any = None) -> Any:
    """``x - alpha * y`` leafwise (``x - y`` when ``alpha`` is None)."""
    if alpha is None:
        return tree_sub(tree_x, tree_y)
    return optree.tree_map(lambda x, y: x - alpha * y, tree_x, tree_y)


def tree_mul(*trees: Any) -> Any:
    """The leafwise product of trees of the same structure."""
    return optree.tree_map(lambda *xs: functools.reduce(operator.mul, xs), *trees)


def tree_matmul(*trees: Any) -> Any:
    """The leafwise matrix product of trees of the same structure."""
    return optree.tree_map(lambda *xs: functools.reduce(operator.matmul, xs), *trees)


def tree_scalar_mul(scalar: Any, multiplicand_tree: Any) -> Any:
    """``scalar * x`` leafwise."""
    return optree.tree_map(lambda x: scalar * x, multiplicand_tree)


def tree_truediv(dividend_tree: Any, divisor_tree: Any) -> Any:
    """``x / y`` leafwise."""
    return optree.tree_map(operator.truediv, dividend_tree, divisor_tree)


def tree_vdot_real(tree_x: Any, tree_y: Any) -> float:
    """``sum_i Re(<x_i, y_i>)`` over the leaves, as a Python float."""
    leaves_x, spec = optree.tree_flatten(tree_x)
    leaves_y = spec.flatten_up_to(tree_y)
    return sum(
        float(torch.vdot(x.reshape(-1), y.reshape(-1)).real)
        for x, y in zip(leaves_x, leaves_y, strict=True)
    )
