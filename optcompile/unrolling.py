"""Memory-bounded unrolls: checkpointed inner loops, truncated backpropagation, graph-free runs.

An unrolled inner loop of ``K`` steps keeps, for the outer backward, every step's saved tensors:
memory grows as :math:`O(K)`. Two options bound it:

- ``checkpoint_every=k``: the loop is cut into :math:`\\lceil K/k \\rceil` segments of ``k``
  steps. Each segment runs without a graph and keeps only its input parameters and optimizer
  state; the outer backward recomputes one segment at a time (:mod:`optcompile.segment`).
  Memory: :math:`O(K/k)` carries plus one segment's graph, so :math:`O(\\sqrt K)` at
  ``k = "sqrt"`` (:math:`k = \\lceil\\sqrt K\\rceil`); time: one extra forward pass of the loop.
  The meta-gradient is exactly the full unroll's.
- ``truncate=k``: truncated backpropagation (the standard for learned optimizers). The first
  :math:`K-k` steps run under ``torch.no_grad()``, their result re-leafed (detached, requiring
  grad as before); only the last ``k`` steps are differentiated. The gradient is the truncated
  one, :math:`\\partial L / \\partial \\theta` through steps :math:`K-k+1 .. K` only.

Both combine (the truncated tail is checkpointed). Under ``torch.no_grad()`` every step runs
without a graph: an evaluation run keeps nothing alive but the current parameters and state.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import optree
import torch

from optcompile.segment import run_segment

__all__ = ["unroll", "unroll_options", "segment_length", "check_options"]

StepFn = Callable[[Any, Any, Any], tuple[Any, Any]]
_TENSOR = object()  # marks where a tensor leaf goes in a remembered output structure
_defaults: contextvars.ContextVar[tuple[int | str | None, int | None]] = contextvars.ContextVar(
    "optcompile_unroll_options", default=(None, None)
)


@contextlib.contextmanager
def unroll_options(
    checkpoint_every: int | str | None = None, truncate: int | None = None
) -> Iterator[None]:
    """Defaults for every :func:`unroll` / ``meta_unroll`` call inside the ``with`` block.

    A call's own ``checkpoint_every`` / ``truncate`` win over these when not ``None``. This is
    what ``@optcompile(checkpoint_every=..., truncate=...)`` enters around the decorated
    function.

    Raises:
        TypeError / ValueError: as :func:`check_options`.
    """
    check_options(checkpoint_every, truncate)
    token = _defaults.set((checkpoint_every, truncate))
    try:
        yield
    finally:
        _defaults.reset(token)


def resolve_options(
    checkpoint_every: int | str | None, truncate: int | None
) -> tuple[int | str | None, int | None]:
    """A call's options, each ``None`` replaced by the enclosing :func:`unroll_options`'."""
    default_every, default_truncate = _defaults.get()
    return (
        default_every if checkpoint_every is None else checkpoint_every,
        default_truncate if truncate is None else truncate,
    )


def segment_length(checkpoint_every: int | str | None, steps: int) -> int | None:
    """The number of steps per checkpointed segment, or ``None`` for no checkpointing.

    Args:
        checkpoint_every: ``None``, a positive int, or ``"sqrt"`` (:math:`\\lceil\\sqrt K\\rceil`).
        steps: the number of differentiated steps :math:`K`.

    Raises:
        TypeError: ``checkpoint_every`` is neither ``None``, an int nor a string.
        ValueError: ``checkpoint_every`` is an int below 1 or a string other than ``"sqrt"``.
    """
    if checkpoint_every is None:
        return None
    if isinstance(checkpoint_every, str):
        if checkpoint_every != "sqrt":
            raise ValueError(
                f'checkpoint_every={checkpoint_every!r} is not a known rule: use "sqrt" or a '
                f"positive int"
            )
        return max(1, math.ceil(math.sqrt(steps)))
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise TypeError(
            f'checkpoint_every must be None, a positive int or "sqrt", got '
            f"{type(checkpoint_every).__name__} {checkpoint_every!r}"
        )
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every} must be at least 1")
    return checkpoint_every


def check_options(checkpoint_every: int | str | None, truncate: int | None) -> None:
    """Check the memory options before K is known (e.g. when a decorator is applied).

    Raises:
        TypeError / ValueError: as :func:`unroll` would, except ``truncate`` > K (checked when
            K is known).
    """
    segment_length(checkpoint_every, 1)
    if truncate is not None:
        _check_truncate(truncate, truncate)


def _check_truncate(truncate: int | None, steps: int) -> int:
    """The number of differentiated steps (``steps`` when ``truncate`` is None)."""
    if truncate is None:
        return steps
    if isinstance(truncate, bool) or not isinstance(truncate, int):
        raise TypeError(
            f"truncate must be None or a positive int, got {type(truncate).__name__} "
            f"{truncate!r}"
        )
    if truncate < 1:
        raise ValueError(
            f"truncate={truncate} must be at least 1 (for no differentiated step at all, run "
            f"the loop under torch.no_grad())"
        )
    if truncate > steps:
        raise ValueError(f"truncate={truncate} exceeds the number of inner steps K={steps}")
    return truncate


def _batches(batches: Iterable[Any] | int) -> list[Any]:
    if isinstance(batches, bool):
        raise TypeError("batches must be an iterable of batches or an int K, got a bool")
    if isinstance(batches, int):
        if batches < 0:
            raise ValueError(f"batches={batches}: the number of steps K must be >= 0")
        return list(range(batches))
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise TypeError(
            f"batches must be a sequence of per-step batches or an int K, got "
            f"{type(batches).__name__}"
        )
    return list(batches)


def _releaf(tree: Any, like: Any) -> Any:
    """Detached copies of ``tree``'s tensor leaves, requiring grad where ``like``'s do.

    ``like`` is the tree before the graph-free steps (whose outputs never require grad).
    """

    def one(leaf: Any, before: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        wants = isinstance(before, torch.Tensor) and before.requires_grad
        return leaf.detach().requires_grad_(wants and leaf.is_floating_point())

    return optree.tree_map(one, tree, like, none_is_leaf=True)


def _grad_leaves(tree: Any) -> list[torch.Tensor]:
    return [t for t in optree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.requires_grad]


def _check_meta(meta: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(meta, torch.Tensor):
        meta = [meta]
    meta = list(meta)
    for i, t in enumerate(meta):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"meta[{i}] must be a tensor, got {type(t).__name__}")
    return meta


def unroll(
    step_fn: StepFn,
    params: Any,
    state: Any,
    batches: Iterable[Any] | int,
    *,
    checkpoint_every: int | str | None = None,
    truncate: int | None = None,
    meta: Sequence[torch.Tensor] = (),
) -> tuple[Any, Any]:
    """Run ``params, state = step_fn(params, state, batch)`` for every batch, memory-bounded.

    ``step_fn`` is a functional inner step in TorchOpt's FuncTorch style, e.g.::

        def step_fn(params, state, batch):
            grads = torch.func.grad(inner_loss)(params, batch)
            updates, state = tx.update(grads, state, params=params, inplace=False)
            return optcompile.apply_updates(params, updates, inplace=False), state

    Args:
        step_fn: one inner step, ``(params, state, batch) -> (params, state)``; pytrees of
            tensors in and out, the same structure every step. With checkpointing it runs twice
            per step (forward, then recomputation in backward) and must compute the same thing
            both times (the random state, CPU and CUDA, is replayed; keep other side effects
            out).
        params: the initial parameters (a pytree of tensors).
        state: the initial optimizer state (``tx.init(params)``).
        batches: one batch per step (an iterable, K = its length), or an int K, in which case
            ``step_fn`` receives the step index ``0 .. K-1`` as its batch.
        checkpoint_every: ``None`` (keep every step's graph), an int ``k`` >= 1 (segments of
            ``k`` steps; only each segment's input params and state are kept, the outer
            backward recomputes one segment at a time) or ``"sqrt"`` (``k = ceil(sqrt(K))``,
            of the differentiated steps when truncating). The meta-gradient is exact. ``None``
            here (and for ``truncate``) takes the value of an enclosing :func:`unroll_options`
            (what ``@optcompile(checkpoint_every=..., truncate=...)`` sets), if any.
        truncate: ``None`` or ``k`` in ``1 .. K``: run the first ``K - k`` steps without a
            graph (the params and state they give are detached leaves) and differentiate the
            last ``k`` only.
        meta: tensors that ``step_fn`` reads from its closure and whose gradients are wanted
            (a learnable learning rate inside ``tx``, meta-parameters of the inner loss). Only
            needed with ``checkpoint_every``; a checkpointed segment that reaches another
            tensor requiring grad raises in backward rather than drop its gradient. Tensors
            inside ``batches`` are found automatically.

    Returns:
        ``(params, state)`` after the K steps. Under ``torch.no_grad()`` no step records a
        graph (graph-free evaluation: memory does not grow with K); otherwise an outer
        ``backward`` / ``torch.autograd.grad`` through them gives the meta-gradient.

    Raises:
        TypeError: ``checkpoint_every``, ``truncate``, ``batches`` or ``meta`` of a wrong type,
            or ``step_fn`` not callable.
        ValueError: ``checkpoint_every`` < 1 or an unknown string, ``truncate`` < 1 or > K.

    Example:
        >>> import torch, optcompile
        >>> tx = optcompile.sgd(lr=0.1)
        >>> w0 = torch.ones(3, requires_grad=True)
        >>> def step_fn(p, s, x):
        ...     g = torch.func.grad(lambda p: ((p[0] * x) ** 2).sum())(p)
        ...     u, s = tx.update(g, s, params=p, inplace=False)
        ...     return optcompile.apply_updates(p, u, inplace=False), s
        >>> xs = [torch.full((3,), 0.5)] * 10
        >>> p, _ = optcompile.unroll(step_fn, (w0,), tx.init((w0,)), xs, checkpoint_every=3)
        >>> p[0].sum().backward()
        >>> torch.allclose(w0.grad, torch.full((3,), 0.95**10))
        True
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    checkpoint_every, truncate = resolve_options(checkpoint_every, truncate)
    steps = _batches(batches)
    n_diff = _check_truncate(truncate, len(steps))
    k = segment_length(checkpoint_every, n_diff)
    meta = _check_meta(meta)
    if not torch.is_grad_enabled():  # graph-free evaluation
        for batch in steps:
            params, state = step_fn(params, state, batch)
        return params, state
    n_free = len(steps) - n_diff
    if n_free:
        before = (params, state)
        with torch.no_grad():
            for batch in steps[:n_free]:
                params, state = step_fn(params, state, batch)
        params, state = _releaf((params, state), before)
    tail = steps[n_free:]
    if k is None:
        for batch in tail:
            params, state = step_fn(params, state, batch)
        return params, state
    for start in range(0, len(tail), k):
        params, state = _checkpointed(step_fn, params, state, tail[start : start + k], meta)
    return params, state


def _checkpointed(
    step_fn: StepFn, params: Any, state: Any, batches: list[Any], meta: list[torch.Tensor]
) -> tuple[Any, Any]:
    """One segment: ``len(batches)`` steps as a :class:`~optcompile.segment.Segment`."""
    leaves, spec = optree.tree_flatten((params, state), none_is_leaf=True)
    slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    out_spec: list[Any] = []  # the output structure and its non-tensor leaves, set in forward

    def runner(carry: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        full = list(leaves)
        for i, t in zip(slots, carry, strict=True):
            full[i] = t
        p, s = optree.tree_unflatten(spec, full)
        for batch in batches:
            p, s = step_fn(p, s, batch)
        out, o_spec = optree.tree_flatten((p, s), none_is_leaf=True)
        if not out_spec:  # tensors are placeholders: keep no reference to them
            out_spec.extend([o_spec, [_TENSOR if isinstance(t, torch.Tensor) else t for t in out]])
        return tuple(t for t in out if isinstance(t, torch.Tensor))

    extras = [*_grad_leaves(batches), *meta]
    outputs = iter(run_segment(runner, [leaves[i] for i in slots], extras))
    o_spec, template = out_spec
    full = [next(outputs) if t is _TENSOR else t for t in template]
    return optree.tree_unflatten(o_spec, full)
