"""The torch-style (``Adam``) and meta (``MetaAdam``) classes, generated from the registry.

Each registered optimizer (see :mod:`optcompile.registry`) gets a torch-style class taking
``params`` and a meta class taking ``module``, with the alias's signature (names, order, defaults)
adjusted by the declaration (``class_defaults``, ``meta_defaults``, ``class_order``,
``class_drop``): TorchOpt's exact signatures for TorchOpt's optimizers. ``__init__`` binds the
arguments and builds the alias.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from optcompile.optim.base import Optimizer
from optcompile.optim.meta.base import MetaOptimizer
from optcompile.registry import OptimizerInfo, publish_into

__all__: list[str] = []  # filled below, one torch-style and one meta name per spelling


def _signature(
    fn: Callable,
    first: str,
    order: Sequence[str],
    defaults: Mapping[str, Any],
    drop: Sequence[str],
) -> inspect.Signature:
    params = {p.name: p for p in inspect.signature(fn).parameters.values() if p.name not in drop}
    order = [n for n in order if n in params]
    names = order + [n for n in params if n not in order]
    new = [inspect.Parameter(first, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in names:
        p = params[name]
        # Names in `order` are positional in TorchOpt (SGD's moment_requires_grad, maximize).
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in order else p.kind
        new.append(p.replace(default=defaults.get(name, p.default), kind=kind))
    return inspect.Signature(new)


def make_class(base: type, name: str, fn: Callable, signature: inspect.Signature) -> type:
    """A ``base`` subclass whose ``__init__(first, ...)`` has ``signature`` and runs ``fn``."""
    first = next(iter(signature.parameters))

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{name}{signature}: {err}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        target = arguments.pop(first)
        base.__init__(self, target, fn(**arguments))

    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
            *signature.parameters.values(),
        ]
    )
    doc = (
        f"{base.__name__} running :func:`optcompile.{fn.__name__}`.\n\nSignature: {name}{signature}"
    )
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


def classes_of(info: OptimizerInfo) -> dict[str, type]:
    """The torch-style and meta classes of one registered optimizer, under every spelling."""
    name, meta_name = info.classes[0], info.meta_classes[0]
    torch_style = make_class(
        Optimizer,
        name,
        info.alias,
        _signature(info.alias, "params", info.class_order, info.class_defaults, info.class_drop),
    )
    meta_defaults = {**info.class_defaults, **info.meta_defaults}
    meta = make_class(
        MetaOptimizer,
        meta_name,
        info.alias,
        _signature(info.alias, "module", info.class_order, meta_defaults, ()),
    )
    made = {spelling: torch_style for spelling in info.classes}
    made.update({spelling: meta for spelling in info.meta_classes})
    return made


_MADE: dict[str, tuple[OptimizerInfo, dict[str, type]]] = {}


def classes_of_registered(info: OptimizerInfo) -> dict[str, type]:
    """:func:`classes_of`, made once per registered optimizer and shared by every namespace."""
    if info.name not in _MADE or _MADE[info.name][0] is not info:
        _MADE[info.name] = (info, classes_of(info))
    return _MADE[info.name][1]


publish_into(globals(), __all__, classes_of_registered)
