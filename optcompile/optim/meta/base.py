"""``MetaOptimizer``: differentiable steps on an ``nn.Module``, for bilevel optimisation.

``step(loss)`` differentiates the loss with ``create_graph=True``, runs the fused rule without
in-place updates, and writes the new, graph-carrying tensors back into the module's
``_parameters`` dicts. An outer ``backward()`` then flows through every inner step into the
meta-parameters (and, with ``moment_requires_grad``, into the initial moments).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from optcompile.base import GradientTransformation
from optcompile.distributed.ddp_guard import check_not_ddp_wrapped
from optcompile.lowering.transforms import transforms_active
from optcompile.optim.base import _check_impl
from optcompile.optim.checkpoint import adopt_state_groups
from optcompile.optim.meta.functional_view import FunctionalView, dotted_names
from optcompile.settings import first_order_active
from optcompile.update import apply_transform

__all__ = ["MetaOptimizer"]


Slot = tuple[tuple[dict, str], ...]  # every (container, name) that holds one parameter


def _trainable_slots(module: nn.Module) -> tuple[Slot, ...]:
    """One slot per distinct parameter that requires grad, in ``modules()`` order.

    A tied parameter (the same tensor in two places, e.g. shared embedding and output weights)
    is one parameter: one gradient, one state, one update, written back to every place.
    """
    slots: dict[int, list[tuple[dict, str]]] = {}
    for submodule in module.modules():
        container = submodule._parameters
        for name, value in container.items():
            if value is not None and value.requires_grad:
                slots.setdefault(id(value), []).append((container, name))
    return tuple(tuple(places) for places in slots.values())


def _current(slots: tuple[Slot, ...]) -> tuple[torch.Tensor, ...]:
    """The parameters the slots hold now (the first place of each)."""
    return tuple(places[0][0][places[0][1]] for places in slots)


def _torchopt_order(slots: tuple[Slot, ...], containers: tuple[dict, ...]) -> tuple[list[int], int]:
    """Where each of our parameters sits among TorchOpt's MetaOptimizer leaves, and their number.

    TorchOpt flattens the tuple of every (sub)module's ``_parameters`` dict with optree, which
    sorts each dict by name and skips ``None``; it keeps frozen and tied parameters as leaves.
    """
    index: dict[tuple[int, str], int] = {}
    seen: set[int] = set()
    for container in containers:
        if id(container) in seen or not container:
            continue
        seen.add(id(container))
        for name in sorted(container):
            if container[name] is not None:
                index[(id(container), name)] = len(index)
    order = [min(index[(id(c), name)] for c, name in places) for places in slots]
    return order, len(index)


class MetaOptimizer:
    """A differentiable optimizer over a module's parameters.

    Args:
        module: the network whose parameters the inner loop updates.
        impl: the transformation (e.g. ``optcompile.sgd(lr=1.0)``).

    Attributes:
        param_containers_groups: per group, the ``_parameters`` dicts it writes into.
        state_groups: per group, the transformation's state.
    """

    def __init__(self, module: nn.Module, impl: GradientTransformation) -> None:
        self.impl = _check_impl(impl)
        self.param_slots_groups: list[tuple[Slot, ...]] = []
        self._module_containers: list[tuple[dict, ...]] = []  # every submodule's _parameters
        self._names: list[tuple[tuple[str, ...], ...]] = []  # per group, see FunctionalView
        self.state_groups: list[Any] = []
        self.add_param_group(module)

    @property
    def param_containers_groups(self) -> list[tuple[dict, ...]]:
        unique = []
        for slots in self.param_slots_groups:
            seen: dict[int, dict] = {}
            for places in slots:
                for container, _ in places:
                    seen.setdefault(id(container), container)
            unique.append(tuple(seen.values()))
        return unique

    def add_param_group(self, module: nn.Module) -> None:
        """Add the trainable parameters of ``module`` as a new group."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        check_not_ddp_wrapped(module)  # the inner loop on ddp.module would never be synced
        slots = _trainable_slots(module)
        if not slots:
            raise ValueError(
                f"module {type(module).__name__} has no parameter that requires grad; a "
                f"MetaOptimizer needs at least one"
            )
        self.param_slots_groups.append(slots)
        self._module_containers.append(tuple(m._parameters for m in module.modules()))
        self._names.append(dotted_names(module, slots))
        self.state_groups.append(self.impl.init(_current(slots)))

    def step(self, loss: torch.Tensor) -> None:
        """One differentiable update of every group from ``loss``.

        Under ``torch.no_grad()`` or ``torch.inference_mode()`` the step is taken without
        recording a graph: the new parameters are leaves (requiring grad as the old ones did)
        and nothing of the step is kept alive, e.g. for evaluating an adapted model.

        Raises:
            ValueError: ``loss`` is not a scalar tensor that requires grad (the module is left
                unchanged).
            RuntimeError: called inside a ``torch.func`` transform (use the functional API).
        """
        if transforms_active():
            name = type(self).__name__
            raise RuntimeError(
                f"{name}.step() cannot run inside a torch.func transform (vmap, grad, jacrev, "
                f"...): it differentiates the loss with torch.autograd.grad, which the "
                f"transforms do not allow. Use the functional API there instead, e.g. "
                f"tx = optcompile.{name[4:].lower()}(...); grads = torch.func.grad(loss_fn)"
                f"(params); updates, state = tx.update(grads, state, params=params, "
                f"inplace=False); params = optcompile.apply_updates(params, updates, "
                f"inplace=False) (see the guide's 'torch.func' section)"
            )
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss must be a scalar tensor, got {shape}; reduce it first (e.g. loss.mean())"
            )
        if not loss.requires_grad:
            raise ValueError(
                "loss does not require grad: it was computed without the module's parameters "
                "or under torch.no_grad()"
            )
        # Under no_grad or inference_mode the step is taken without recording a graph (the
        # gradient of the loss is still computed: the loss was built with grad enabled).
        recording = torch.is_grad_enabled()
        create_graph = recording and not first_order_active()
        new_groups, all_grads = [], []
        for slots, state in zip(self.param_slots_groups, self.state_groups, strict=True):
            params = _current(slots)
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    loss, params, create_graph=create_graph, allow_unused=True, retain_graph=True
                )
            all_grads.append(grads)
            with torch.set_grad_enabled(recording):
                new_params, new_state = apply_transform(
                    self.impl, grads, state, params, inplace=False
                )
            if not recording:  # leaves again, so the next step's loss can be differentiated
                new_params = [
                    new.detach().requires_grad_(old.requires_grad)
                    for new, old in zip(new_params, params, strict=True)
                ]
            new_groups.append((slots, new_params, new_state))
        if all(g is None for grads in all_grads for g in grads):
            raise ValueError(
                "loss does not depend on any parameter this optimizer updates: it was computed "
                "before the last step (compute it again from the module), or without the module"
            )
        for i, (_, new_params, new_state) in enumerate(new_groups):
            self._write_group(i, new_params, new_state)

    def functional_view(self, group: int = 0) -> FunctionalView:
        """The group's parameters, names, state and transformation for a functional inner step.

        For compiling whole inner steps of this optimizer with ``@optcompile``: write the step
        over ``view.params`` with ``torch.func.functional_call(module, view.as_dict(params),
        ...)`` and ``view.tx``, then ``view.commit(params, state)`` (guide, section 5).

        Raises:
            IndexError: no such group.
        """
        if not 0 <= group < len(self.param_slots_groups):
            raise IndexError(f"group={group}: this optimizer has {len(self.param_slots_groups)}")
        return FunctionalView(
            optimizer=self,
            group=group,
            names=self._names[group],
            params=_current(self.param_slots_groups[group]),
            state=self.state_groups[group],
            tx=self.impl,
        )

    def _write_group(self, group: int, params: Sequence[torch.Tensor], state: Any) -> None:
        """The group's new parameters into every place that holds them, and its new state."""
        self.state_groups[group] = state
        for places, value in zip(self.param_slots_groups[group], params, strict=True):
            for container, name in places:
                container[name] = value

    def state_dict(self) -> tuple[Any, ...]:
        """The state of every group (the live objects, not copies)."""
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[Any]) -> None:
        """Replace the group states: by reference if ``state_dict`` is this optimizer's.

        A TorchOpt 0.7.3 state dict of the same meta-optimizer is translated (see
        :mod:`optcompile.optim.checkpoint`), its leaves put in this optimizer's order.

        Raises:
            ValueError: ``state_dict`` is not a state of this optimizer; the message names the
                group, member, state class, field, leaf and shape that differ. Nothing changes.
        """
        orders = [
            _torchopt_order(slots, c)
            for slots, c in zip(self.param_slots_groups, self._module_containers, strict=True)
        ]
        self.state_groups[:] = adopt_state_groups(
            self.state_groups,
            state_dict,
            fresh=lambda i: self.impl.init(_current(self.param_slots_groups[i])),
            orders=[order for order, _ in orders],
            n_foreign=[n for _, n in orders],
        )
