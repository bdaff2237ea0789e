"""Gradient hooks on the updates: they act on the backward pass of the meta-gradient.

``chain(register_hook(zero_nan_hook), adam(lr))`` leaves the forward update untouched and
replaces NaN by 0 in the cotangent that the outer ``backward()`` sends through each update
tensor: the TorchOpt workaround for the NaN that ``sqrt`` at 0 produces in MetaAdam.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import optree
import torch

from optcompile.base import EmptyState, GradientTransformation

__all__ = ["register_hook", "zero_nan_hook", "nan_to_num_hook"]

Hook = Callable[[torch.Tensor], torch.Tensor | None]


def zero_nan_hook(g: torch.Tensor) -> torch.Tensor:
    r"""Replace NaN by 0 in the gradient ``g``, as TorchOpt does: ``g.nan_to_num(nan=0.0)``.

    Like TorchOpt's, the hook also maps :math:`\pm\infty` to the dtype's finite extremes.

    Args:
        g: the gradient flowing backward through a tensor.

    Returns:
        ``g`` with NaN replaced by 0.
    """
    return g.nan_to_num(nan=0.0)


def _check_real(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")


def nan_to_num_hook(
    nan: float = 0.0, posinf: float | None = None, neginf: float | None = None
) -> Hook:
    """Return a hook that applies ``torch.nan_to_num(g, nan, posinf, neginf)`` to a gradient.

    Args:
        nan: the value that replaces NaN.
        posinf: the value that replaces +inf; ``None``: the dtype's largest finite value.
        neginf: the value that replaces -inf; ``None``: the dtype's lowest finite value.

    Returns:
        The hook, for :func:`register_hook` or ``Tensor.register_hook``.

    Raises:
        TypeError: an argument is not a real number (or ``None`` for the infinities).
    """
    _check_real("nan", nan)
    for name, value in (("posinf", posinf), ("neginf", neginf)):
        if value is not None:
            _check_real(name, value)

    def hook(g: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(g, nan=nan, posinf=posinf, neginf=neginf)

    return hook


def register_hook(hook: Hook) -> GradientTransformation:
    """A stateless transform that registers ``hook`` on every update tensor that requires grad.

    The updates are returned unchanged (the same tree, the same tensors); ``hook`` runs when the
    meta-gradient flows backward through them. ``None`` leaves (unused parameters) and tensors
    that do not require grad are skipped. The state is ``EmptyState()``.

    Args:
        hook: called as ``hook(grad)`` by autograd; returns the replacement gradient or ``None``.

    Returns:
        A :class:`~optcompile.base.GradientTransformation`.

    Raises:
        TypeError: ``hook`` is not callable.

    Examples:
        >>> x = torch.ones(2, requires_grad=True)
        >>> transform = register_hook(zero_nan_hook)
        >>> updates, _ = transform.update((x * 0,), transform.init((x,)))
        >>> updates[0].sqrt().mul(0).sum().backward()  # d(0 * sqrt(u))/du = 0 * inf = NaN at 0,
        >>> x.grad  # zeroed on the way through the update (NaN without the hook)
        tensor([0., 0.])
    """
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")

    def init(params: Any) -> EmptyState:
        return EmptyState()

    def update(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        for leaf in optree.tree_leaves(updates, none_is_leaf=False):
            if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                leaf.register_hook(hook)
        return updates, state

    return GradientTransformation(init, update)
