"""Swap a module's parameters and buffers by dotted name: ``swap_state`` (permanent) and
``reparametrize`` (for the duration of a ``with`` block).

The semantics are those of ``torch.func.functional_call``'s reparametrisation, which TorchOpt's
versions predate: a weight tied to another (the same tensor reachable under two names, e.g. an
embedding shared with the output layer) follows its tie when one name is replaced, and two
different values for tied names are an error. Meta-parameters of a
:class:`~optcompile.nn.MetaGradientModule` are swappable like parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["swap_state", "reparametrize", "reparameterize"]

MISSING: Any = object()  # stands for "no such attribute" in a swap's record of old values

_TENSOR_DICTS = ("_parameters", "_buffers", "_meta_parameters")
_MODULE_DICTS = ("_modules", "_meta_modules")


def _named_tensors(module: nn.Module, prefix: str, path: tuple[int, ...]) -> Iterator[tuple]:
    """Every (name, tensor) reachable from ``module``, duplicates and ties included."""
    for dict_name in _TENSOR_DICTS:
        for name, tensor in getattr(module, dict_name, {}).items():
            if tensor is not None:
                yield prefix + name, tensor
    for dict_name in _MODULE_DICTS:
        for name, child in getattr(module, dict_name, {}).items():
            if child is not None and id(child) not in path:  # no infinite loop on a cycle
                yield from _named_tensors(child, f"{prefix}{name}.", (*path, id(child)))


def _ties(module: nn.Module) -> dict[str, tuple[str, ...]]:
    """For each name, every name (itself included) under which the same tensor is reachable."""
    groups: dict[int, list[str]] = {}
    for name, tensor in _named_tensors(module, "", (id(module),)):
        groups.setdefault(id(tensor), []).append(name)
    return {name: tuple(names) for names in groups.values() for name in names}


def _expand_ties(module: nn.Module, named: dict[str, Any]) -> dict[str, Any]:
    ties = _ties(module)
    expanded: dict[str, Any] = {}
    for name, value in named.items():
        for alias in ties.get(name, (name,)):
            if alias in named and named[alias] is not value:
                raise ValueError(
                    f"'{name}' and '{alias}' are tied (the same tensor) in "
                    f"{type(module).__name__} but were given different values; give one of "
                    "them, or the same tensor for both"
                )
            expanded[alias] = value
    return expanded


def _swap_one(module: nn.Module, path: str, value: Any, allow_missing: bool) -> Any:
    *parents, attr = path.split(".")
    owner = module
    for i, part in enumerate(parents):
        owner = getattr(owner, part, None)
        if not isinstance(owner, nn.Module):
            raise AttributeError(
                f"'{'.'.join(parents[: i + 1])}' in '{path}' is not a submodule of "
                f"{type(module).__name__}"
            )
    if allow_missing:
        old = getattr(owner, attr, MISSING)
    elif hasattr(owner, attr):
        old = getattr(owner, attr)
    else:
        raise AttributeError(
            f"{type(module).__name__} has no parameter or buffer '{path}' (pass "
            "allow_missing=True to add it)"
        )
    for dict_name in _TENSOR_DICTS:
        tensors = getattr(owner, dict_name, None)
        if tensors is not None and attr in tensors:
            if value is MISSING:
                del tensors[attr]
            else:
                tensors[attr] = value  # no Parameter check: any tensor, e.g. one with history
            return old
    if value is MISSING:
        delattr(owner, attr)
    else:
        setattr(owner, attr, value)
    return old


def swap_state(
    module: nn.Module,
    named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    allow_missing: bool = False,
) -> dict[str, torch.Tensor]:
    """Replace parameters/buffers of ``module`` by dotted name; return the replaced tensors.

    Args:
        module: the module to modify in place.
        named_tensors: ``{"layer.weight": tensor, ...}`` or an iterable of pairs.
        allow_missing: set names that do not exist yet (and record them as missing, so that
            swapping the returned dict back deletes them).

    Returns:
        The old tensors, by name (tied names included): ``swap_state(module, old)`` undoes it.

    Raises:
        AttributeError: a name does not exist and ``allow_missing`` is False.
        ValueError: tied names were given different tensors.
    """
    named = dict(named_tensors)
    expanded = _expand_ties(module, named)
    return {name: _swap_one(module, name, value, allow_missing) for name, value in expanded.items()}


@contextlib.contextmanager
def reparametrize(
    module: nn.Module,
    named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    allow_missing: bool = False,
) -> Iterator[nn.Module]:
    """Within the ``with`` block, ``module`` computes with the given tensors in place of its own.

    ``with reparametrize(net, {"weight": w}): net(x)`` equals
    ``torch.func.functional_call(net, {"weight": w}, (x,))``; on exit (even by an exception)
    the original tensors are back.

    Args:
        module: the module.
        named_tensors: ``{"layer.weight": tensor, ...}`` or an iterable of pairs.
        allow_missing: allow names that do not exist (they are removed again on exit).

    Yields:
        ``module`` itself.
    """
    old: dict[str, Any] = {}
    try:
        old = swap_state(module, named_tensors, allow_missing=allow_missing)
        yield module
    finally:
        for name, tensor in old.items():
            _swap_one(module, name, tensor, allow_missing=True)


reparameterize = reparametrize
