"""``MetaGradientModule``: an ``nn.Module`` that tells inner parameters from meta-parameters.

Tensors that require grad and modules with trainable parameters passed to the constructor
are the *meta*-inputs (what an outer loop learns). Assigning one of them as an attribute
registers it as a meta-parameter / meta-module; any other grad-requiring tensor becomes an
ordinary (inner) parameter. ``parameters()`` then lists the inner problem's unknowns and
``meta_parameters()`` what the outer loop differentiates.

Beyond TorchOpt (#144): a module argument is a meta-module when it has a parameter that
requires grad, whatever its ``training`` flag, so a network in ``eval()`` mode (BatchNorm
running statistics frozen) still contributes its meta-parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, NamedTuple

import optree
import torch
from torch import nn

__all__ = ["MetaGradientModule", "MetaInputsContainer"]

_MEMBER_DICTS = ("_parameters", "_buffers", "_modules", "_meta_parameters", "_meta_modules")


class MetaInputsContainer(NamedTuple):
    """The constructor's meta-inputs: grad-requiring tensors and trainable modules."""

    meta_parameters: set[torch.Tensor]
    meta_modules: set[nn.Module]


def _is_meta_module(x: Any) -> bool:
    return isinstance(x, nn.Module) and any(p.requires_grad for p in x.parameters())


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string. Got {torch.typename(name)}")
    if "." in name:
        raise KeyError(f"{kind} name can't contain '.', got: '{name}'")
    if name == "":
        raise KeyError(f"{kind} name can't be empty string ''")


class MetaGradientModule(nn.Module):
    """Base class for modules holding meta-parameters and meta-modules (TorchOpt's API)."""

    _meta_inputs: MetaInputsContainer
    _meta_parameters: dict[str, torch.Tensor | None]
    _meta_modules: dict[str, nn.Module | None]

    def __new__(cls, *args: Any, **kwargs: Any) -> MetaGradientModule:
        """Record which constructor arguments are meta-inputs, before ``__init__`` runs."""
        instance = super().__new__(cls)
        leaves = optree.tree_leaves((args, kwargs), is_leaf=lambda x: isinstance(x, nn.Module))
        tensors = {x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad}
        modules = {x for x in leaves if _is_meta_module(x)}
        for module in tuple(modules):
            tensors.update(module.parameters())
            modules.update(module.modules())
        instance._meta_inputs = MetaInputsContainer(tensors, modules)
        instance._meta_parameters = OrderedDict()
        instance._meta_modules = OrderedDict()
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Initialise the module; subclasses take their meta-inputs as arguments."""
        super().__init__()

    def __getattr__(self, name: str) -> Any:
        """Look ``name`` up in parameters, buffers, modules, meta-parameters, meta-modules."""
        for dict_name in _MEMBER_DICTS:
            members = self.__dict__.get(dict_name)
            if members is not None and name in members:
                return members[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def _forget(self, name: str) -> None:
        self.__dict__.pop(name, None)
        for dict_name in _MEMBER_DICTS:
            self.__dict__[dict_name].pop(name, None)
        self._non_persistent_buffers_set.discard(name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Register grad-requiring tensors and modules as (meta-)parameters and (meta-)modules."""
        d = self.__dict__
        if "_parameters" not in d or "_meta_parameters" not in d:
            if isinstance(value, (torch.Tensor, nn.Module)):
                raise AttributeError(
                    f"cannot assign '{name}' before MetaGradientModule.__init__() call"
                )
            object.__setattr__(self, name, value)
            return
        if isinstance(value, torch.Tensor) and value.requires_grad:
            self._forget(name)
            if value in self._meta_inputs.meta_parameters:
                self.register_meta_parameter(name, value)
            else:
                self.register_parameter(name, value)
        elif isinstance(value, nn.Module):
            self._forget(name)
            if value in self._meta_inputs.meta_modules:
                self._meta_modules[name] = value
            else:
                self._modules[name] = value
        elif value is None and name in d["_meta_parameters"]:
            self._meta_parameters[name] = None
        elif value is None and name in d["_meta_modules"]:
            self._meta_modules[name] = None
        elif name in d["_meta_parameters"] or name in d["_meta_modules"]:
            raise TypeError(
                f"cannot assign '{torch.typename(value)}' as meta-parameter or meta-module "
                f"'{name}' (a grad-requiring torch.Tensor, an nn.Module or None expected)"
            )
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        """Delete a parameter, buffer, module, meta-parameter or meta-module."""
        for dict_name in ("_meta_parameters", "_meta_modules"):
            if name in self.__dict__.get(dict_name, {}):
                del self.__dict__[dict_name][name]
                return
        super().__delattr__(name)

    def register_parameter(self, name: str, param: torch.Tensor | None) -> None:
        """Add an inner parameter (any tensor that requires grad, not only ``nn.Parameter``)."""
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign parameter before Module.__init__() call")
        _check_name("parameter", name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is not None:
            if not isinstance(param, torch.Tensor):
                raise TypeError(
                    f"cannot assign '{torch.typename(param)}' object to parameter '{name}' "
                    "(torch.Tensor or None required)"
                )
            if not param.requires_grad:
                raise ValueError(
                    f"cannot assign Tensor that `requires_grad=False` to parameter '{name}'"
                )
            if param in self._meta_inputs.meta_parameters:
                raise ValueError(
                    f"cannot assign Tensor that is a meta-parameter to parameter '{name}'. "
                    "Use self.register_meta_parameter() instead."
                )
        self._parameters[name] = param  # type: ignore[assignment]

    def register_meta_parameter(self, name: str, param: torch.Tensor | None) -> None:
        """Add a meta-parameter: a tensor that requires grad, learnt by the outer loop."""
        if "_meta_parameters" not in self.__dict__:
            raise AttributeError(
                "cannot assign meta-parameter before MetaGradientModule.__init__() call"
            )
        _check_name("meta-parameter", name)
        if hasattr(self, name) and name not in self._meta_parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is not None:
            if not isinstance(param, torch.Tensor):
                raise TypeError(
                    f"cannot assign '{torch.typename(param)}' object to meta-parameter "
                    f"'{name}' (torch.Tensor or None required)"
                )
            if not param.requires_grad:
                raise ValueError(
                    f"cannot assign Tensor that `requires_grad=False` to meta-parameter '{name}'"
                )
        self._meta_parameters[name] = param

    def add_module(self, name: str, module: nn.Module | None) -> None:
        """Add an inner child module (a meta-input is refused: use ``add_meta_module``)."""
        if not isinstance(module, nn.Module) and module is not None:
            raise TypeError(f"{torch.typename(module)} is not a Module subclass")
        _check_name("module", name)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        if module in self._meta_inputs.meta_modules:
            raise ValueError(
                f"cannot add module that is a meta-module to module '{name}'. "
                "Use self.add_meta_module() instead."
            )
        self._modules[name] = module

    def register_module(self, name: str, module: nn.Module | None) -> None:
        """Alias of :meth:`add_module`."""
        self.add_module(name, module)

    def add_meta_module(self, name: str, meta_module: nn.Module | None) -> None:
        """Add a child meta-module, whose parameters are meta-parameters."""
        if not isinstance(meta_module, nn.Module) and meta_module is not None:
            raise TypeError(f"{torch.typename(meta_module)} is not a Module subclass")
        _check_name("meta-module", name)
        if hasattr(self, name) and name not in self._meta_modules:
            raise KeyError(f"attribute '{name}' already exists")
        self._meta_modules[name] = meta_module

    def register_meta_module(self, name: str, meta_module: nn.Module | None) -> None:
        """Alias of :meth:`add_meta_module`."""
        self.add_meta_module(name, meta_module)

    def meta_parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """The meta-parameters (each once), for the outer optimiser."""
        for _, param in self.named_meta_parameters(recurse=recurse):
            yield param

    def named_meta_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, meta-parameter)`` pairs: direct ones, then those of the meta-modules."""
        memo: set[torch.Tensor] = set()
        for name, param in self._meta_parameters.items():
            if param is not None and param not in memo:
                memo.add(param)
                yield prefix + name, param
        for name, meta_module in self._meta_modules.items():
            if meta_module is None:
                continue
            for sub_name, param in meta_module.named_parameters(prefix + name, recurse):
                if param not in memo:
                    memo.add(param)
                    yield sub_name, param

    def meta_children(self) -> Iterator[nn.Module]:
        """The immediate child meta-modules."""
        for _, module in self.named_meta_children():
            yield module

    def named_meta_children(self) -> Iterator[tuple[str, nn.Module]]:
        """``(name, meta-module)`` pairs of the immediate children, each module once."""
        memo: set[nn.Module] = set()
        for name, module in self._meta_modules.items():
            if module is not None and module not in memo:
                memo.add(module)
                yield name, module

    def meta_modules(self) -> Iterator[nn.Module]:
        """All meta-modules, recursively, each once."""
        for _, module in self.named_meta_modules():
            yield module

    def named_meta_modules(
        self, memo: set[nn.Module] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        """``(name, meta-module)`` pairs of all meta-modules and their submodules."""
        memo = set() if memo is None else memo
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        for name, module in self._meta_modules.items():
            if module is not None:
                sub_prefix = prefix + ("." if prefix else "") + name
                yield from module.named_modules(memo, sub_prefix, remove_duplicate)
