"""A functional view of a meta-optimizer: compile its inner steps whole with ``@optcompile``.

``MetaOptimizer.step`` differentiates with ``torch.autograd.grad(create_graph=True)``, which
``torch.compile`` cannot trace, so only its fused update is compiled. The view hands out what
the functional API takes instead: the module's current parameters (in the optimizer's order,
the order its state was built in) with their names for ``torch.func.functional_call``, and the
optimizer's state and transformation. An inner step written over them is compiled whole
(model, loss, ``torch.func.grad``, update and their backward); :meth:`FunctionalView.commit`
writes the adapted parameters and the state back, so that the outer loss is computed with the
module as usual and its backward reaches the meta-parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optcompile.base import GradientTransformation

if TYPE_CHECKING:
    from optcompile.optim.meta.base import MetaOptimizer

__all__ = ["FunctionalView"]


@dataclass(frozen=True)
class FunctionalView:
    """One parameter group of a meta-optimizer, as the functional API sees it.

    Attributes:
        names: per parameter, every dotted name it has in the group's module (several for a
            tied parameter), in the optimizer's order.
        params: the parameters now (a tuple in that order: the optimizer's state follows it).
        state: the optimizer's state of the group now.
        tx: the optimizer's transformation (``tx.update(grads, state, params=params, ...)``).
    """

    optimizer: MetaOptimizer
    group: int
    names: tuple[tuple[str, ...], ...]
    params: tuple[torch.Tensor, ...]
    state: Any
    tx: GradientTransformation

    def as_dict(self, params: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``params`` by name, for ``torch.func.functional_call(module, as_dict(params), ...)``.

        Raises:
            ValueError: not one tensor per parameter of the group.
        """
        self._check(params)
        return {name: p for names, p in zip(self.names, params, strict=True) for name in names}

    def commit(self, params: Sequence[torch.Tensor], state: Any) -> None:
        """Make ``params`` the module's parameters and ``state`` the optimizer's, as ``step`` does.

        Raises:
            ValueError: not one tensor per parameter of the group, or a tensor of another shape.
        """
        self._check(params)
        for i, (old, new) in enumerate(zip(self.params, params, strict=True)):
            if not isinstance(new, torch.Tensor) or new.shape != old.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ValueError(
                    f"params[{i}] ({self.names[i][0]}) is {got}, expected shape "
                    f"{tuple(old.shape)}"
                )
        self.optimizer._write_group(self.group, tuple(params), state)

    def _check(self, params: Sequence[torch.Tensor]) -> None:
        if not isinstance(params, tuple | list) or len(params) != len(self.names):
            got = len(params) if isinstance(params, tuple | list) else type(params).__name__
            raise ValueError(
                f"params: expected a tuple of {len(self.names)} tensors (the view's order), "
                f"got {got}"
            )


def dotted_names(module: nn.Module, slots: Sequence[tuple[tuple[dict, str], ...]]) -> tuple:
    """Every dotted name of each slot's parameter within ``module``."""
    prefixes: dict[int, str] = {}
    for prefix, submodule in module.named_modules(remove_duplicate=False):
        prefixes.setdefault(id(submodule._parameters), prefix)
    return tuple(
        tuple(
            f"{prefixes[id(container)]}.{name}" if prefixes[id(container)] else name
            for container, name in places
        )
        for places in slots
    )
