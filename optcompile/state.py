"""Extract, recover, clone and detach the tensors of a module or a meta-optimizer (TorchOpt utils).

A meta-learning loop saves the inner network before the inner steps, restores it afterwards and
cuts the graph between outer steps::

    net_state = extract_state_dict(net)          # references: the outer gradient flows into them
    optim_state = extract_state_dict(optim)
    ...inner optim.step(loss) calls, outer loss.backward()...
    recover_state_dict(net, net_state)
    recover_state_dict(optim, optim_state)
    stop_gradient(net), stop_gradient(optim)     # before the next outer step

A module is read through its per-(sub)module ``_parameters`` / ``_buffers`` dicts, because a
meta-optimizer step writes plain non-leaf tensors (not ``nn.Parameter``) into them. Any other
object with callable ``state_dict()`` and ``load_state_dict()`` (the meta-optimizers, but also
``torch.optim`` optimizers) is handled through those two methods.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import optree
import torch
from torch import nn

__all__ = [
    "ModuleState",
    "extract_state_dict",
    "recover_state_dict",
    "stop_gradient",
    "module_clone",
    "module_detach_",
]

_MODES = {
    "reference": "reference",
    "ref": "reference",
    "copy": "copy",
    "clone": "copy",
    "deepcopy": "deepcopy",
    "deepclone": "deepcopy",
}


class ModuleState(NamedTuple):
    """The tensors of a module, one dict per (sub)module, in ``module.modules()`` order.

    Attributes:
        params: one ``name -> tensor`` dict per (sub)module with a non-empty ``_parameters``.
        buffers: the same for ``_buffers``; ``()`` when extracted with ``with_buffers=False``.
        visual_contents: for :func:`optcompile.visual.make_dot`: ``grad_fn`` (non-leaf parameter)
            or tensor (leaf parameter) -> ``visual_prefix + dotted name``; ``None`` unless
            extracted with ``enable_visual=True``.
        detach_buffers: the buffers are detached copies, and :func:`recover_state_dict` copies
            them again so that the module never aliases the saved state.
    """

    params: tuple[dict[str, torch.Tensor], ...]
    buffers: tuple[dict[str, torch.Tensor], ...]
    visual_contents: dict[Any, str] | None = None
    detach_buffers: bool = False


class _Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def _is_stateful(target: object) -> bool:
    return (
        not isinstance(target, nn.Module)
        and callable(getattr(target, "state_dict", None))
        and callable(getattr(target, "load_state_dict", None))
    )


def _tensor_tree(target: object) -> Any:
    if not isinstance(target, torch.Tensor) and optree.tree_is_leaf(target, none_is_leaf=False):
        raise TypeError(
            "target must be an nn.Module, a ModuleState, an optimizer with state_dict() and "
            f"load_state_dict(), or a pytree of tensors, got {type(target).__name__}"
        )
    return target


def _detached_copy(t: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """A copy of ``t`` cut from the graph, keeping ``requires_grad`` and the Parameter type."""
    out = t.detach().clone()
    if device is not None:
        out = out.to(device)
    if isinstance(t, nn.Parameter):
        return nn.Parameter(out, requires_grad=t.requires_grad)
    return out.requires_grad_(t.requires_grad)


def _replicator(by: str, device: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-tensor copy policy: ``t`` itself, ``t.clone()`` or a detached copy, then moved."""
    if not isinstance(by, str) or by not in _MODES:
        raise ValueError(f"by={by!r} is not a copy mode: expected one of {', '.join(_MODES)}")
    if device is not None:
        try:
            device = torch.device(device)
        except TypeError as error:
            raise TypeError(f"device must be a torch.device, str or int, got {device!r}") from error
        except RuntimeError as error:
            raise ValueError(f"device={device!r} is not a device: {error}") from error
    mode = _MODES[by]
    if mode == "deepcopy":
        return lambda t: _detached_copy(t, device)
    if mode == "copy":
        return lambda t: t.clone() if device is None else t.clone().to(device)
    return lambda t: t if device is None else t.to(device)


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    return optree.tree_map(
        lambda x: fn(x) if isinstance(x, torch.Tensor) else x, tree, none_is_leaf=False
    )


def _containers(module: nn.Module, with_buffers: bool = True) -> tuple[tuple[dict, ...], ...]:
    """The live ``_parameters`` / ``_buffers`` dicts that are not empty, in ``modules()`` order."""
    params = tuple(m._parameters for m in module.modules() if m._parameters)
    buffers = tuple(m._buffers for m in module.modules() if m._buffers) if with_buffers else ()
    return params, buffers


def _tensors_of(container: Mapping[str, Any], fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    return {k: fn(v) for k, v in container.items() if isinstance(v, torch.Tensor)}


def extract_state_dict(
    target: nn.Module | _Stateful,
    *,
    by: str = "reference",
    device: torch.device | str | int | None = None,
    with_buffers: bool = True,
    enable_visual: bool = False,
    detach_buffers: bool = False,
    visual_prefix: str = "",
) -> Any:
    """Save the tensors of a module or of a meta-optimizer.

    Each tensor :math:`t` is replicated according to ``by``:

    - ``'reference'`` / ``'ref'``: :math:`t` itself, so the outer gradient flows into it and
      accumulates across tasks (MAML);
    - ``'copy'`` / ``'clone'``: ``t.clone()``, a new tensor whose ``grad_fn`` (``CloneBackward``)
      leads back to :math:`t`;
    - ``'deepcopy'`` / ``'deepclone'``: a copy cut from the graph that keeps ``requires_grad``
      and stays an ``nn.Parameter`` if :math:`t` is one.

    With ``device``, the result is then moved with ``.to(device)`` (one more autograd hop, a
    ``ToCopyBackward``, when that changes the device; none when the tensor is already there).

    Args:
        target: an ``nn.Module``, or an object with callable ``state_dict()`` and
            ``load_state_dict()`` such as a meta-optimizer.
        by: the copy mode above.
        device: where to move the replicated tensors; ``None`` keeps them where they are.
        with_buffers: module only: extract the buffers too.
        enable_visual: module only: fill ``visual_contents`` for ``make_dot``.
        detach_buffers: module only: buffers are detached copies whatever ``by`` is.
        visual_prefix: module only: prefix of the names in ``visual_contents``.

    Returns:
        For a module, a :class:`ModuleState`; otherwise ``target.state_dict()`` with every tensor
        leaf replicated (the module-only arguments are ignored).

    Raises:
        ValueError: ``by`` is not one of the six modes, or ``device`` is not a device.
        TypeError: ``target`` is neither a module nor an object with ``state_dict()`` and
            ``load_state_dict()``.
    """
    replicate = _replicator(by, device)
    if _is_stateful(target):
        return _map_tensors(replicate, target.state_dict())
    if not isinstance(target, nn.Module):
        raise TypeError(
            "target must be an nn.Module or an optimizer with state_dict() and load_state_dict(), "
            f"got {type(target).__name__}"
        )
    param_containers, buffer_containers = _containers(target, with_buffers)
    copy_buffer = _replicator("deepcopy", device) if detach_buffers else replicate
    visual_contents = None
    if enable_visual:
        # Parameters updated by one fused step share its grad_fn: name it after all of them.
        visual_contents = {}
        for name, p in target.named_parameters():
            key = p if p.grad_fn is None else p.grad_fn
            label = visual_prefix + name
            visual_contents[key] = (
                f"{visual_contents[key]}, {label}" if key in visual_contents else label
            )
    return ModuleState(
        params=tuple(_tensors_of(c, replicate) for c in param_containers),
        buffers=tuple(_tensors_of(c, copy_buffer) for c in buffer_containers),
        visual_contents=visual_contents,
        detach_buffers=detach_buffers,
    )


def _pair_up(
    name: str, containers: tuple[dict, ...], saved: Any
) -> list[tuple[dict, Mapping[str, torch.Tensor]]]:
    """Pair live containers with saved dicts; raise before anything is changed if they differ."""
    if not isinstance(saved, tuple | list) or len(saved) != len(containers):
        count = len(saved) if isinstance(saved, tuple | list) else type(saved).__name__
        raise ValueError(
            f"{name} holds {count} dicts but the module has {len(containers)} (sub)modules with "
            "tensors there: was the state extracted from another module?"
        )
    for i, (container, values) in enumerate(zip(containers, saved, strict=True)):
        expected = sorted(k for k, v in container.items() if isinstance(v, torch.Tensor))
        if not isinstance(values, Mapping) or sorted(values) != expected:
            got = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise ValueError(f"{name}[{i}] has keys {got} but the module has {expected}")
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{name}[{i}][{key!r}] must be a tensor, got {type(value).__name__}"
                )
    return list(zip(containers, saved, strict=True))


def recover_state_dict(target: nn.Module | _Stateful, state: Any) -> None:
    """Restore what :func:`extract_state_dict` saved, by reference (no copy, no autograd op).

    For a module, each ``_parameters`` / ``_buffers`` dict is updated with the saved one
    (``dict.update``); a state extracted with ``with_buffers=False`` (``buffers == ()``) leaves
    the buffers alone, and one extracted with ``detach_buffers=True`` restores fresh detached
    copies of its buffers. The whole state is checked against the module before anything
    changes. Any other target gets ``target.load_state_dict(state)``.

    Args:
        target: the module or optimizer that the state was extracted from.
        state: a :class:`ModuleState` for a module, else what ``extract_state_dict`` returned.

    Raises:
        TypeError: ``target`` is neither a module nor an object with ``state_dict()`` and
            ``load_state_dict()``, ``state`` is not a ``ModuleState`` for a module, or a saved
            value is not a tensor.
        ValueError: the state does not fit the module (other number of dicts, other keys); the
            module is left unchanged.
    """
    if _is_stateful(target):
        target.load_state_dict(state)
        return
    if not isinstance(target, nn.Module):
        raise TypeError(
            "target must be an nn.Module or an optimizer with state_dict() and load_state_dict(), "
            f"got {type(target).__name__}"
        )
    if not isinstance(state, ModuleState):
        raise TypeError(
            "state must be the ModuleState that extract_state_dict returned for a module, "
            f"got {type(state).__name__}"
        )
    param_containers, buffer_containers = _containers(target)
    param_pairs = _pair_up("state.params", param_containers, state.params)
    buffer_pairs = (
        _pair_up("state.buffers", buffer_containers, state.buffers) if state.buffers else []
    )
    if state.detach_buffers:
        buffer_pairs = [(c, _tensors_of(values, _detached_copy)) for c, values in buffer_pairs]
    for container, values in param_pairs + buffer_pairs:
        container.update(values)


def _detach_(t: torch.Tensor) -> None:
    requires_grad = t.requires_grad
    t.detach_().requires_grad_(requires_grad)


def stop_gradient(target: ModuleState | nn.Module | _Stateful | Any) -> None:
    """Cut every tensor of ``target`` from its graph, in place, keeping ``requires_grad``.

    Each tensor :math:`t` gets ``t.detach_()`` and its ``requires_grad`` back, so a non-leaf
    tensor becomes a leaf and later backward passes stop there. Tensors shared with a module
    (states extracted by reference) are cut in the module too.

    Args:
        target: a :class:`ModuleState` (params and buffers), an ``nn.Module`` (its
            ``parameters()``), an object with ``state_dict()`` and ``load_state_dict()`` (the
            tensors of its ``state_dict()``) or a pytree of tensors (non-tensor leaves are
            skipped).

    Raises:
        TypeError: ``target`` is a single non-tensor leaf such as a number or a string.
    """
    if isinstance(target, ModuleState):
        tree: Any = (target.params, target.buffers)
    elif isinstance(target, nn.Module):
        tree = tuple(target.parameters())
    elif _is_stateful(target):
        tree = target.state_dict()
    else:
        tree = _tensor_tree(target)
    for leaf in optree.tree_leaves(tree, none_is_leaf=False):
        if isinstance(leaf, torch.Tensor):
            _detach_(leaf)


def module_clone(
    target: nn.Module | _Stateful | Any,
    *,
    by: str = "reference",
    detach_buffers: bool = False,
    device: torch.device | str | int | None = None,
) -> Any:
    """Clone a module, an optimizer or a pytree of tensors, replicating its tensors per ``by``.

    A module or optimizer is ``copy.deepcopy``-ed with the tensors of its own state shared (so
    a module's non-leaf parameters need not support deepcopy), then given the state that
    :func:`extract_state_dict` extracts from the original with ``by``, ``device`` and
    ``detach_buffers``. In a pytree each tensor is replicated as ``extract_state_dict`` would.

    A meta-optimizer's clone holds copies of its module's parameter containers, not the module
    itself (as in TorchOpt): clone the module and build a new optimizer on the clone to adapt
    a copy. Cloning a meta-optimizer after a step fails where its module's parameters are
    non-leaf tensors (torch cannot deepcopy those).

    Args:
        target: an ``nn.Module``, an object with ``state_dict()`` and ``load_state_dict()``, or a
            pytree of tensors.
        by: ``'reference'``/``'ref'``, ``'copy'``/``'clone'`` or ``'deepcopy'``/``'deepclone'``.
        detach_buffers: module only: the clone's buffers are detached copies.
        device: where to move the replicated tensors.

    Returns:
        The clone.

    Raises:
        ValueError: ``by`` is not one of the six modes, or ``device`` is not a device.
        TypeError: ``target`` is a single non-tensor leaf.
    """
    replicate = _replicator(by, device)
    if isinstance(target, nn.Module) or _is_stateful(target):
        tree = _containers(target) if isinstance(target, nn.Module) else target.state_dict()
        memo = {id(t): t for t in optree.tree_leaves(tree) if isinstance(t, torch.Tensor)}
        clone = copy.deepcopy(target, memo)
        state = extract_state_dict(target, by=by, device=device, detach_buffers=detach_buffers)
        recover_state_dict(clone, state)
        return clone
    return _map_tensors(replicate, _tensor_tree(target))


def module_detach_(target: Any) -> Any:
    """:func:`stop_gradient` on ``target``, then return ``target`` (for chaining).

    Args:
        target: anything :func:`stop_gradient` accepts.

    Returns:
        ``target`` itself, detached in place.
    """
    stop_gradient(target)
    return target
