"""The optimizer registry: one declaration per optimizer, next to its rule.

An optimizer is declared once, in its rule file, by decorating the function that builds its
transformation with :func:`optimizer`. That function's signature (names, order, defaults) is the
TorchOpt-style alias's signature and its docstring the alias's docstring. From the declaration
come, without another line anywhere:

- the alias (``optcompile.lion``, ``optcompile.alias.lion``): it binds the arguments, validates
  each one *once* against the declared domains (``betas`` element by element, named
  ``betas[0]``/``betas[1]`` in errors), then runs the builder;
- the torch-style class (``optcompile.Lion(params, ...)``) and the meta class
  (``optcompile.MetaLion(module, ...)``), generated in :mod:`optcompile.optim.classes`;
- the exports of :mod:`optcompile`, :mod:`optcompile.alias` and :mod:`optcompile.optim`.

This is PyTorch's ``OptimizerInfo`` database in spirit: data about each optimizer, in one place,
that the library and the test database (``tests/optimizer_db.py``) iterate over.

Example (the whole of an optimizer's glue, next to its rule):

    >>> from optcompile.assemble import preconditioned
    >>> from optcompile.rules.adam import scale_by_adam
    >>> @optimizer(classes=("MyAdam",), domains={"betas": "[0, 1)"}, register=False)
    ... def my_adam(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, *, backend=None):
    ...     '''Adam, declared again.'''
    ...     return preconditioned(scale_by_adam, lr=lr, weight_decay=weight_decay,
    ...                           backend=backend, b1=betas[0], b2=betas[1])
    >>> my_adam.info.classes
    ('MyAdam',)
    >>> my_adam(betas=(1.0, 0.9))
    Traceback (most recent call last):
    ...
    optcompile.errors.HyperparameterError: betas[0]=1.0 is outside its domain: expected [0, 1)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from optcompile.errors import HyperparameterError
from optcompile.lowering.check import Domain, numbers_of, parse_domain
from optcompile.rules import load_all

__all__ = [
    "OptimizerInfo",
    "optimizer",
    "optimizers",
    "unregister",
    "publish_into",
    "check_argument",
]

# Every alias validates these two when its signature has them.
_COMMON_DOMAINS = {"lr": ">= 0", "weight_decay": ">= 0"}


@dataclass(frozen=True)
class OptimizerInfo:
    """What the library knows about one optimizer, declared once next to its rule.

    Attributes:
        name: the alias's name, e.g. ``"adam"``.
        alias: the validated alias (what ``optcompile.adam`` is).
        builder: the declared function, run by ``alias`` after validation.
        domains: per argument, its parsed domain (a tuple argument's applies to each element).
        classes: the torch-style class name and its other spellings, e.g.
            ``("Adamax", "AdaMax")``; the meta classes are ``"Meta" + name``.
        class_defaults: defaults that differ in the torch-style and meta classes (TorchOpt's
            ``Adamax`` has ``lr=2e-3``).
        meta_defaults: defaults that differ in the meta class only (e.g.
            ``moment_requires_grad=True``).
        class_order: arguments the classes take positionally in this order (TorchOpt's SGD).
        class_drop: arguments the torch-style class does not take.
        module: the module that declared it.
    """

    name: str
    alias: Callable[..., Any]
    builder: Callable[..., Any]
    domains: Mapping[str, Domain]
    classes: tuple[str, ...]
    class_defaults: Mapping[str, Any] = field(default_factory=dict)
    meta_defaults: Mapping[str, Any] = field(default_factory=dict)
    class_order: tuple[str, ...] = ()
    class_drop: tuple[str, ...] = ("moment_requires_grad",)
    module: str = ""

    @property
    def signature(self) -> inspect.Signature:
        """The alias's signature (the declared function's)."""
        return inspect.signature(self.builder)

    @property
    def meta_classes(self) -> tuple[str, ...]:
        """The meta classes' names, e.g. ``("MetaAdamax", "MetaAdaMax")``."""
        return tuple("Meta" + c for c in self.classes)


_REGISTRY: dict[str, OptimizerInfo] = {}
# Called with (info, True) when an optimizer is registered, (info, False) when it is withdrawn.
_SUBSCRIBERS: list[Callable[[OptimizerInfo, bool], None]] = []


def optimizer(
    *,
    classes: Sequence[str],
    domains: Mapping[str, str] | None = None,
    class_defaults: Mapping[str, Any] | None = None,
    meta_defaults: Mapping[str, Any] | None = None,
    class_order: Sequence[str] = (),
    class_drop: Sequence[str] = ("moment_requires_grad",),
    register: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an optimizer: decorate the function that builds its transformation.

    Args:
        classes: the torch-style class name, then other spellings (``("RMSprop", "RMSProp")``).
        domains: allowed values per argument (``"[0, 1)"``, ``">= 0"``); ``lr`` and
            ``weight_decay`` get ``">= 0"`` unless given. A tuple argument's domain (``betas``)
            applies to each element.
        class_defaults: defaults of the torch-style and meta classes that differ from the alias.
        meta_defaults: defaults of the meta class only that differ.
        class_order: arguments the classes take positionally, in this order.
        class_drop: arguments the torch-style class does not take (default
            ``moment_requires_grad``: a torch-style optimizer is not differentiated through).
        register: False builds the alias without registering it (for examples).

    Returns:
        A decorator that returns the validated alias; ``alias.info`` is its
        :class:`OptimizerInfo`.

    Raises:
        TypeError: ``domains``, ``class_order`` or ``class_drop`` names an argument the function
            does not take, or ``classes`` is empty.
    """
    if isinstance(classes, str) or not classes:
        raise TypeError(f"classes={classes!r} must be a non-empty sequence of class names")

    def declare(builder: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(builder)
        names = set(signature.parameters)
        texts = {k: v for k, v in _COMMON_DOMAINS.items() if k in names}
        texts.update(domains or {})
        for what, given in (
            ("domains", texts),
            ("class_order", class_order),
            ("class_drop", class_drop if class_drop != ("moment_requires_grad",) else ()),
            ("class_defaults", class_defaults or {}),
            ("meta_defaults", meta_defaults or {}),
        ):
            unknown = [n for n in given if n not in names]
            if unknown:
                raise TypeError(
                    f"optimizer {builder.__name__}: {what} names {unknown}, not arguments"
                )
        parsed = {k: parse_domain(v) for k, v in texts.items()}

        @functools.wraps(builder)
        def alias(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as err:
                raise TypeError(f"{builder.__name__}{signature}: {err}") from None
            bound.apply_defaults()
            for name, domain in parsed.items():
                _check_bound(name, bound.arguments[name], domain, signature)
            return builder(**bound.arguments)

        alias.__module__ = "optcompile.alias"
        info = OptimizerInfo(
            name=builder.__name__,
            alias=alias,
            builder=builder,
            domains=parsed,
            classes=tuple(classes),
            class_defaults=dict(class_defaults or {}),
            meta_defaults=dict(meta_defaults or {}),
            class_order=tuple(class_order),
            class_drop=tuple(n for n in class_drop if n in names),
            module=builder.__module__,
        )
        alias.info = info  # type: ignore[attr-defined]
        if register:
            _register(info)
        return alias

    return declare


def _check_bound(name: str, value: Any, domain: Domain, signature: inspect.Signature) -> None:
    default = signature.parameters[name].default
    if isinstance(default, tuple):  # betas, etas, ...: as many as the default, each checked
        n = len(default)
        if not isinstance(value, tuple | list) or len(value) != n:
            what = {2: "a pair", 3: "a triple"}.get(n, f"a sequence of {n}")
            stem = name[:-1] if name.endswith("s") else name
            names = ", ".join(f"{stem}{i + 1}" for i in range(n))
            raise TypeError(f"{name}={value!r} must be {what} ({names})")
        for i, element in enumerate(value):
            check_argument(f"{name}[{i}]", element, domain)
    else:
        check_argument(name, value, domain)


def check_argument(name: str, value: Any, domain: Domain) -> None:
    """Raise unless ``value`` is a schedule or a real number / 0-d tensor inside ``domain``.

    Raises:
        TypeError: ``value`` is neither a number, a one-element tensor nor a callable.
        HyperparameterError: ``value`` lies outside ``domain`` (the error names ``name``).
    """
    values = numbers_of(value)
    if values is None:
        if callable(value) and not isinstance(value, torch.Tensor):
            return  # a schedule: its values are not known in advance
        raise TypeError(f"{name}={value!r} must be a real number or a 0-d tensor")
    if not all(domain.contains(v) for v in values):
        raise HyperparameterError(name, value, domain.text)


def optimizers() -> dict[str, OptimizerInfo]:
    """Every registered optimizer by alias name, the built-in ones first (rule-file order)."""
    order = {module.__name__: i for i, module in enumerate(load_all())}
    ranked = sorted(_REGISTRY.values(), key=lambda info: order.get(info.module, len(order)))
    return {info.name: info for info in ranked}


def _register(info: OptimizerInfo) -> None:
    old = _REGISTRY.get(info.name)
    if old is not None and old.module != info.module:
        raise ValueError(
            f"optimizer {info.name!r} is already declared in {old.module}; pick another name"
        )
    if old is not None:
        unregister(info.name)  # a module declared again (reloaded): the new one replaces it
    _REGISTRY[info.name] = info
    for callback in _SUBSCRIBERS:
        callback(info, True)


def unregister(name: str) -> OptimizerInfo:
    """Withdraw a registered optimizer: its alias and classes leave every namespace.

    Raises:
        KeyError: no optimizer of that name is registered.
    """
    if name not in _REGISTRY:
        raise KeyError(f"no optimizer {name!r} is registered; registered: {sorted(_REGISTRY)}")
    info = _REGISTRY.pop(name)
    for callback in _SUBSCRIBERS:
        callback(info, False)
    return info


def publish_into(
    namespace: dict[str, Any],
    exported: list[str],
    names_of: Callable[[OptimizerInfo], Mapping[str, Any]],
) -> None:
    """Keep a module's globals and ``__all__`` in step with the registry.

    Every registered optimizer's ``names_of(info)`` is added to ``namespace`` and ``exported``
    now, in registry order, and each one registered later is added then (a rule declared in any
    module, a test included, appears at once as alias and classes); a withdrawn one is removed.
    """

    def publish(info: OptimizerInfo, present: bool) -> None:
        for name, value in names_of(info).items():
            if present:
                namespace[name] = value
                if name not in exported:
                    exported.append(name)
            else:
                namespace.pop(name, None)
                if name in exported:
                    exported.remove(name)

    for info in optimizers().values():
        publish(info, True)
    _SUBSCRIBERS.append(publish)
