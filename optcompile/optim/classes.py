"""The torch-style (``Adam``) and meta (``MetaAdam``) classes, generated from the aliases.

Each class has TorchOpt's exact signature (names, order, defaults); its ``__init__`` binds the
arguments and builds the alias. Generating them keeps the eight optimizers x two families from
being written sixteen times.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from optcompile import alias
from optcompile.optim.base import Optimizer
from optcompile.optim.meta.base import MetaOptimizer

__all__ = [
    "SGD", "Adam", "AdamW", "Adamax", "Adagrad", "Adadelta", "RAdam", "RMSprop",
    "AdaMax", "AdaGrad", "AdaDelta", "RMSProp",
    "MetaSGD", "MetaAdam", "MetaAdamW", "MetaAdamax", "MetaAdagrad", "MetaAdadelta", "MetaRAdam",
    "MetaRMSprop", "MetaAdaMax", "MetaAdaGrad", "MetaAdaDelta", "MetaRMSProp",
]  # fmt: skip


def _signature(
    fn: Callable,
    first: str,
    order: Sequence[str] | None,
    defaults: dict[str, Any],
    drop: Sequence[str],
) -> inspect.Signature:
    params = {p.name: p for p in inspect.signature(fn).parameters.values() if p.name not in drop}
    order = [n for n in order or () if n in params]
    names = order + [n for n in params if n not in order]
    new = [inspect.Parameter(first, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in names:
        p = params[name]
        # Names in `order` are positional in TorchOpt (SGD's moment_requires_grad, maximize).
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in order else p.kind
        new.append(p.replace(default=defaults.get(name, p.default), kind=kind))
    return inspect.Signature(new)


def _make(
    base: type,
    name: str,
    fn: Callable,
    *,
    first: str,
    order: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    **defaults: Any,
) -> type:
    signature = _signature(fn, first, order, defaults, drop)

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


# TorchOpt's SGD classes take every argument positionally, in this order (weight_decay before
# dampening, unlike sgd()); `moment_requires_grad` is dropped from the classic SGD.
_SGD_ORDER = (
    "lr",
    "momentum",
    "weight_decay",
    "dampening",
    "nesterov",
    "moment_requires_grad",
    "maximize",
)
_CLASSIC = {"first": "params", "drop": ("moment_requires_grad",)}

SGD = _make(Optimizer, "SGD", alias.sgd, order=_SGD_ORDER, **_CLASSIC)
Adam = _make(Optimizer, "Adam", alias.adam, **_CLASSIC)
AdamW = _make(Optimizer, "AdamW", alias.adamw, **_CLASSIC)
Adamax = AdaMax = _make(Optimizer, "Adamax", alias.adamax, lr=2e-3, eps=1e-8, **_CLASSIC)
Adagrad = AdaGrad = _make(Optimizer, "Adagrad", alias.adagrad, **_CLASSIC)
Adadelta = AdaDelta = _make(Optimizer, "Adadelta", alias.adadelta, lr=1.0, **_CLASSIC)
RAdam = _make(Optimizer, "RAdam", alias.radam, eps=1e-8, **_CLASSIC)
RMSprop = RMSProp = _make(Optimizer, "RMSprop", alias.rmsprop, **_CLASSIC)

MetaSGD = _make(
    MetaOptimizer,
    "MetaSGD",
    alias.sgd,
    first="module",
    order=_SGD_ORDER,
    moment_requires_grad=True,
)
MetaAdam = _make(MetaOptimizer, "MetaAdam", alias.adam, first="module", moment_requires_grad=True)
MetaAdamW = _make(MetaOptimizer, "MetaAdamW", alias.adamw, first="module")
MetaAdamax = MetaAdaMax = _make(
    MetaOptimizer,
    "MetaAdamax",
    alias.adamax,
    first="module",
    lr=2e-3,
    eps=1e-8,
    moment_requires_grad=True,
)
MetaAdagrad = MetaAdaGrad = _make(MetaOptimizer, "MetaAdagrad", alias.adagrad, first="module")
MetaAdadelta = MetaAdaDelta = _make(
    MetaOptimizer,
    "MetaAdadelta",
    alias.adadelta,
    first="module",
    lr=1.0,
    moment_requires_grad=True,
)
MetaRAdam = _make(
    MetaOptimizer, "MetaRAdam", alias.radam, first="module", eps=1e-8, moment_requires_grad=True
)
MetaRMSprop = MetaRMSProp = _make(MetaOptimizer, "MetaRMSprop", alias.rmsprop, first="module")
