"""A checkpointed segment of an unrolled inner loop: keep its inputs, recompute it in backward.

A segment maps a carry (the parameters and optimizer state, flattened to tensors) through ``k``
inner steps. :class:`Segment` runs those steps without a graph and saves only the carry it
received; when the outer backward reaches it, it runs the same steps again with a graph from the
saved carry and returns the vector-Jacobian product

.. math::
    \\bar c_{\\mathrm{in}} = \\Big(\\frac{\\partial\\, c_{\\mathrm{out}}}
    {\\partial\\, c_{\\mathrm{in}}}\\Big)^{\\!\\top} \\bar c_{\\mathrm{out}},

and likewise for every *extra* tensor the steps read (meta-parameters, batches that require
grad). Chaining the segments gives the full unroll's gradient exactly, while memory holds the
segment inputs plus one segment's graph at a time.

Why not ``torch.utils.checkpoint``: its non-reentrant variant rests on saved-tensor hooks,
which ``torch.func.grad`` (the inner gradient of a functional step) refuses; the reentrant
variant cannot return gradients through ``torch.autograd.grad``. Here the recomputation is
differentiated with ``torch.autograd.grad``. With respect to fresh leaves made from the saved
carry, normally: so the nested call cannot run earlier segments' backward, which also reach
the extras. Under an outer ``backward(create_graph=True)``, with respect to the saved carry
itself, so the recorded graph reaches the real inputs and higher-order derivatives stay correct
(extras are refused there, since they would pull in the earlier segments).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import torch

from optcompile import settings

__all__ = ["Segment", "run_segment"]

# run(carry, grad_enabled) -> new carry; carry is a tuple of tensors.
Runner = Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]


class Segment(torch.autograd.Function):
    """``forward(runner, n_carry, *carry, *extras)`` -> the carry after the segment's steps.

    ``extras`` are not read from the arguments: the runner reads them from its own closure (the
    user's step function, the batches). They are arguments only so that autograd links the
    segment's outputs to them and asks for their gradients.
    """

    @staticmethod
    def forward(
        runner: Runner, replay: Any, n_carry: int, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        # The random state advances as in a full unroll; ``replay`` recorded where it started.
        outputs = runner(tensors[:n_carry])
        # Fresh tensor objects: an output may be a leaf made inside the steps, or an input.
        return tuple(t.detach() for t in outputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        runner, replay, n_carry, *tensors = inputs
        ctx.runner, ctx.replay, ctx.n_carry = runner, replay, n_carry
        ctx.save_for_backward(*tensors)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        tensors = ctx.saved_tensors
        carry = tensors[: ctx.n_carry]
        needs = ctx.needs_input_grad[3:]
        wanted = [i for i, need in enumerate(needs) if need]
        if not wanted:
            return (None,) * (3 + len(tensors))
        create_graph = torch.is_grad_enabled()
        if create_graph:
            # Differentiate with respect to the saved carry itself, so that the graph this
            # backward records reaches the real inputs (higher-order derivatives).
            if any(i >= ctx.n_carry for i in wanted):
                raise RuntimeError(
                    "a backward with create_graph=True through a checkpointed segment cannot "
                    "also differentiate meta=... tensors or batches: the recomputation would "
                    "run the earlier segments' backward too. Use checkpoint_every=None for "
                    "higher-order meta-gradients with respect to such tensors"
                )
        else:
            # Fresh leaves: the nested autograd.grad cannot reach earlier segments, which
            # also depend on the extras (a learnable learning rate is read by every segment).
            carry = tuple(
                t.detach().requires_grad_(need) for t, need in zip(carry, needs, strict=False)
            )
        tensors = (*carry, *tensors[ctx.n_carry :])
        start = _next_sequence_nr()
        (cpu_rng, cuda_rng), context, run_settings = ctx.replay
        devices = list(range(len(cuda_rng))) if cuda_rng is not None else []
        with torch.enable_grad(), torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            # The caller's context variables and @optcompile settings (backend, first_order)
            # hold in the replay too, though the outer backward usually runs outside the
            # decorated call.
            with settings.restored(run_settings):
                outputs = context.run(ctx.runner, carry)
        pairs = [
            (out, cot)
            for out, cot in zip(outputs, cotangents, strict=True)
            if cot is not None and out.requires_grad
        ]
        grads: list[torch.Tensor | None] = [None] * len(tensors)
        if pairs:
            _check_closure(
                [out for out, _ in pairs], [tensors[i] for i in wanted], start,
                _next_sequence_nr(),
            )  # fmt: skip
            found = torch.autograd.grad(
                [out for out, _ in pairs],
                [tensors[i] for i in wanted],
                [cot for _, cot in pairs],
                allow_unused=True,
                create_graph=create_graph,
            )
            for i, g in zip(wanted, found, strict=True):
                grads[i] = g
        return (None, None, None, *grads)


def run_segment(
    runner: Runner, carry: Sequence[torch.Tensor], extras: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """Run ``runner`` on ``carry`` as one checkpointed segment (see :class:`Segment`).

    Args:
        runner: maps the carry tensors to the carry tensors after the segment's steps; it must
            be deterministic given the random state (CPU, and CUDA once initialised) and the
            context variables (all replayed in backward).
        carry: the tensors the segment starts from (saved for backward).
        extras: tensors the runner reads from its closure whose gradients are wanted.
    """
    replay = (_rng_state(), contextvars.copy_context(), settings.snapshot())
    outputs = Segment.apply(runner, replay, len(carry), *carry, *extras)
    return tuple(outputs)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The CPU random state, and every CUDA device's once CUDA is in use (as checkpoint does)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None


def _next_sequence_nr() -> int:
    """The sequence number the next autograd node created on this thread will get."""
    with torch.enable_grad():
        probe = torch.zeros((), requires_grad=True).view(())
    return probe.grad_fn._sequence_nr()  # type: ignore[union-attr]


def _check_closure(
    outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], start: int, stop: int
) -> None:
    """Raise if the recomputed graph reaches a tensor that requires grad but is not an input.

    Such a tensor (a learnable learning rate or a meta-parameter the step function reads from
    its closure) would silently receive no gradient. The graph made by the recomputation is
    the nodes numbered in ``[start, stop)`` on this thread; a node outside that range is a
    boundary, allowed only where it is one of the inputs.
    """
    leaves = {id(t) for t in inputs if t.grad_fn is None}
    edges = {(id(t.grad_fn), t.output_nr) for t in inputs if t.grad_fn is not None}
    keep = [t.grad_fn for t in inputs if t.grad_fn is not None]  # ids stay valid while kept
    stack = [out.grad_fn for out in outputs if out.grad_fn is not None]
    seen: dict[int, Any] = {}
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        for child, nr in node.next_functions:
            if child is None or (id(child), nr) in edges:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:  # AccumulateGrad of a leaf
                if id(variable) not in leaves:
                    _raise_closure(variable)
                continue
            if not start <= child._sequence_nr() < stop:
                _raise_closure(None)
            stack.append(child)
    del keep


def _raise_closure(tensor: torch.Tensor | None) -> None:
    what = "a tensor" if tensor is None else f"a tensor of shape {tuple(tensor.shape)}"
    raise RuntimeError(
        f"a checkpointed segment read {what} that requires grad but is neither a parameter, "
        f"the optimizer state, a batch nor one of meta=...: its gradient would be lost. Pass "
        f"every such tensor (e.g. a learnable learning rate, meta-parameters the step function "
        f"closes over) as unroll(..., meta=[...])"
    )
