"""TorchOpt's ``distributed.autograd``, on ``torch.distributed.autograd``.

Inside ``with context() as ctx_id:``, a graph built from RPC results spans processes.
``backward(ctx_id, loss)`` runs it and, like a local ``loss.backward()``, adds each local leaf's
gradient into its ``.grad``; ``grad(ctx_id, outputs, inputs)`` returns the gradients instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.distributed.autograd as _dist_autograd

__all__ = ["is_available", "context", "DistAutogradContext", "get_gradients", "backward", "grad"]

TensorOrTensors = torch.Tensor | Sequence[torch.Tensor]

# RPC runs backward passes of different contexts on its own threads; ``.grad`` is written under
# this lock so that two of them never interleave a read-add-write on one leaf.
_GRAD_LOCK = threading.Lock()


def is_available() -> bool:
    """Whether this build of PyTorch has distributed autograd."""
    return _dist_autograd.is_available()


if is_available():
    from torch.distributed.autograd import DistAutogradContext, context, get_gradients
else:  # pragma: no cover - builds without torch.distributed

    def _unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torch.distributed.autograd is not available in this PyTorch build")

    DistAutogradContext = context = get_gradients = _unavailable  # type: ignore[assignment]


def _as_tuple(tensors: TensorOrTensors, name: str) -> tuple[torch.Tensor, ...]:
    result = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    if not result:
        raise ValueError(f"{name} must hold at least one tensor, got an empty sequence")
    for t in result:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must hold tensors, got {type(t).__name__}")
    return result


def backward(
    autograd_ctx_id: int,
    tensors: TensorOrTensors,
    retain_graph: bool = False,
    inputs: TensorOrTensors | None = None,
) -> None:
    """Backpropagate ``tensors`` through the distributed graph; add gradients into local ``.grad``.

    Args:
        autograd_ctx_id: the id from ``with context() as autograd_ctx_id``.
        tensors: scalar roots (their gradient is 1).
        retain_graph: keep the graph for another backward.
        inputs: only these local leaves receive ``.grad`` (all local leaves when None).

    Raises:
        ValueError: ``inputs`` is empty or holds a tensor that does not require grad.
    """
    roots = list(_as_tuple(tensors, "tensors"))
    only = None
    if inputs is not None:
        only = _as_tuple(inputs, "inputs")
        if not all(t.requires_grad for t in only):
            raise ValueError("every tensor in inputs must require grad")
    _dist_autograd.backward(autograd_ctx_id, roots, retain_graph=retain_graph)
    local = _dist_autograd.get_gradients(autograd_ctx_id)
    if only is not None:
        wanted = {id(t) for t in only}
        local = {p: g for p, g in local.items() if id(p) in wanted}
    with _GRAD_LOCK:
        for p, g in local.items():
            p.grad = g.clone() if p.grad is None else p.grad + g


def grad(
    autograd_ctx_id: int,
    outputs: TensorOrTensors,
    inputs: TensorOrTensors,
    retain_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """The gradients of ``outputs`` (summed) with respect to local ``inputs``; ``.grad`` untouched.

    Raises:
        ValueError: an input does not require grad, or (without ``allow_unused``) does not reach
            the outputs.
    """
    roots = list(_as_tuple(outputs, "outputs"))
    wanted = _as_tuple(inputs, "inputs")
    if not all(t.requires_grad for t in wanted):
        raise ValueError("every tensor in inputs must require grad")
    _dist_autograd.backward(autograd_ctx_id, roots, retain_graph=retain_graph)
    local = {id(p): g for p, g in _dist_autograd.get_gradients(autograd_ctx_id).items()}
    result = []
    for i, t in enumerate(wanted):
        g = local.get(id(t))
        if g is None and not allow_unused:
            raise ValueError(
                f"inputs[{i}] was not used to compute the outputs; pass allow_unused=True to get "
                f"None for it"
            )
        result.append(g)
    return tuple(result)
