"""optax's wrappers around a transformation: ``apply_if_finite``, ``MultiSteps`` (gradient
accumulation), ``multi_transform``/``partition`` (a transformation per group of leaves) and
``lookahead``.

They decide *when* or *where* the inner transformation runs; its maths (and its fused kernels)
are untouched. All of them take and return PyTorch-style pytrees of tensors, and work with
``inplace=False`` (differentiable steps, as in ``MetaOptimizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import optree
import torch

from optcompile.base import GradientTransformation
from optcompile.lowering.check import parse_domain
from optcompile.masking import masked
from optcompile.update import apply_updates

__all__ = [
    "ApplyIfFiniteState",
    "apply_if_finite",
    "MultiStepsState",
    "MultiSteps",
    "MultiTransformState",
    "multi_transform",
    "partition",
    "LookaheadState",
    "lookahead",
]


def _zeros_like(tree: Any) -> Any:
    return optree.tree_map(
        lambda t: None if t is None else torch.zeros_like(t), tree, none_is_leaf=True
    )


def _all_finite(tree: Any) -> bool:
    leaves = [t for t in optree.tree_leaves(tree, none_is_leaf=True) if t is not None]
    return all(bool(torch.isfinite(t).all()) for t in leaves)


class ApplyIfFiniteState(NamedTuple):
    """The state of :func:`apply_if_finite` (optax's fields)."""

    notfinite_count: int
    last_finite: bool
    total_notfinite: int
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip steps whose updates hold a NaN or an infinity, as optax's ``apply_if_finite``.

    A skipped step returns zero updates and leaves ``inner``'s state unchanged. After more than
    ``max_consecutive_errors`` consecutive non-finite steps the update is applied anyway (so a
    run that only produces NaN does not silently stall).

    Reading finiteness synchronises with the device once per step.

    Raises:
        TypeError: ``max_consecutive_errors`` is not a non-negative int.
    """
    if (
        isinstance(max_consecutive_errors, bool)
        or not isinstance(max_consecutive_errors, int)
        or max_consecutive_errors < 0
    ):
        raise TypeError(
            f"max_consecutive_errors={max_consecutive_errors!r} must be a non-negative int"
        )

    def init(params: Any) -> ApplyIfFiniteState:
        return ApplyIfFiniteState(0, True, 0, inner.init(params))

    def update(
        updates: Any, state: ApplyIfFiniteState, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, ApplyIfFiniteState]:
        finite = _all_finite(updates)
        notfinite = 0 if finite else state.notfinite_count + 1
        total = state.total_notfinite + (0 if finite else 1)
        if finite or notfinite > max_consecutive_errors:
            new_updates, inner_state = inner.update(
                updates, state.inner_state, params=params, inplace=inplace
            )
        else:
            new_updates, inner_state = _zeros_like(updates), state.inner_state
        return new_updates, ApplyIfFiniteState(notfinite, finite, total, inner_state)

    return GradientTransformation(init, update)


class MultiStepsState(NamedTuple):
    """The state of :class:`MultiSteps`: the position in the accumulation and its sum/mean."""

    mini_step: int
    gradient_step: int
    inner_opt_state: Any
    acc_grads: Any


class MultiSteps:
    r"""Gradient accumulation (optax's ``MultiSteps``): the inner optimizer steps every ``k``.

    Every call accumulates the incoming updates (their running mean, or sum when
    ``use_grad_mean=False``); the ``k``-th call feeds the accumulation to ``opt`` and returns its
    updates, the others return zeros and leave ``opt``'s state alone.

    .. math:: \bar g = \frac1k \sum_{i=1}^{k} g_i, \qquad u_k = \mathrm{opt}(\bar g), \quad
        u_{1..k-1} = 0

    Args:
        opt: the inner transformation.
        every_k_schedule: ``k``, or a schedule ``gradient_step -> k`` (an int >= 1).
        use_grad_mean: accumulate the mean (default) or the sum.

    Raises:
        TypeError: ``every_k_schedule`` is neither an int >= 1 nor callable.
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[int], int],
        use_grad_mean: bool = True,
    ) -> None:
        if isinstance(every_k_schedule, bool) or not (
            callable(every_k_schedule)
            or (isinstance(every_k_schedule, int) and every_k_schedule >= 1)
        ):
            raise TypeError(
                f"every_k_schedule={every_k_schedule!r} must be an int >= 1 or a schedule"
            )
        self.opt = opt
        self.use_grad_mean = bool(use_grad_mean)
        self._every_k = every_k_schedule

    def _k(self, gradient_step: int) -> int:
        k = self._every_k(gradient_step) if callable(self._every_k) else self._every_k
        return int(k)

    def init(self, params: Any) -> MultiStepsState:
        """The initial state: nothing accumulated, ``opt``'s initial state."""
        return MultiStepsState(0, 0, self.opt.init(params), _zeros_like(params))

    def update(
        self, updates: Any, state: MultiStepsState, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, MultiStepsState]:
        """Accumulate ``updates``; every ``k``-th call, run ``opt`` on the accumulation."""
        n = state.mini_step

        def accumulate(g: torch.Tensor | None, acc: torch.Tensor | None) -> torch.Tensor | None:
            if g is None:
                return None
            return (g + n * acc) / (n + 1) if self.use_grad_mean else g + acc

        acc = optree.tree_map(accumulate, updates, state.acc_grads, none_is_leaf=True)
        if n + 1 < self._k(state.gradient_step):
            return _zeros_like(updates), MultiStepsState(
                n + 1, state.gradient_step, state.inner_opt_state, acc
            )
        new_updates, inner_state = self.opt.update(
            acc, state.inner_opt_state, params=params, inplace=inplace
        )
        return new_updates, MultiStepsState(
            0, state.gradient_step + 1, inner_state, _zeros_like(acc)
        )

    def has_updated(self, state: MultiStepsState) -> bool:
        """Whether the last call ran the inner optimizer."""
        return state.mini_step == 0 and state.gradient_step > 0

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulation as a :class:`~optcompile.base.GradientTransformation`."""
        return GradientTransformation(self.init, self.update)


class MultiTransformState(NamedTuple):
    """The state of :func:`multi_transform`: each label's transformation's state."""

    inner_states: dict


def multi_transform(
    transforms: Mapping[Hashable, GradientTransformation], param_labels: Any
) -> GradientTransformation:
    """A transformation per group of leaves, as optax's ``multi_transform`` / ``partition``.

    Args:
        transforms: label -> the transformation of the leaves with that label.
        param_labels: a pytree of labels with the params' structure, or a callable
            ``params -> such a tree``.

    Raises:
        ValueError: a leaf's label has no transformation (raised at ``init``).
    """
    transforms = dict(transforms)

    def labels_of(tree: Any) -> Any:
        return param_labels(tree) if callable(param_labels) else param_labels

    def masks(tree: Any) -> dict:
        labels = labels_of(tree)
        found = set(optree.tree_leaves(labels))
        missing = found - set(transforms)
        if missing:
            raise ValueError(
                f"param_labels hold {sorted(map(repr, missing))} without a transformation; "
                f"transforms has {sorted(map(repr, transforms))}"
            )
        return {
            label: optree.tree_map(lambda leaf, lab=label: leaf == lab, labels)
            for label in transforms
        }

    def inner(tree: Any) -> dict:
        return {
            label: masked(tx, mask)
            for (label, tx), mask in zip(transforms.items(), masks(tree).values(), strict=True)
        }

    def init(params: Any) -> MultiTransformState:
        return MultiTransformState({label: tx.init(params) for label, tx in inner(params).items()})

    def update(
        updates: Any, state: MultiTransformState, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, MultiTransformState]:
        new_states = {}
        for label, tx in inner(params if params is not None else updates).items():
            updates, new_states[label] = tx.update(
                updates, state.inner_states[label], params=params, inplace=inplace
            )
        return updates, MultiTransformState(new_states)

    return GradientTransformation(init, update)


partition = multi_transform  # optax's newer name


class LookaheadState(NamedTuple):
    """The state of :func:`lookahead`: the fast optimizer's state, the slow weights, the step."""

    fast_state: Any
    slow: Any
    steps_since_sync: int


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead (Zhang et al., 2019) on the parameters themselves (PyTorch style).

    The parameters are the *fast* weights; the state keeps the *slow* ones. Every
    ``sync_period`` steps, after the fast step, both become
    :math:`\phi \leftarrow \phi + \alpha(\theta - \phi)`:

    .. math:: \theta' = \theta + u \text{ (fast step)}, \qquad \text{at a sync: }
        \phi' = \phi + \alpha(\theta' - \phi), \ \theta' \leftarrow \phi'

    The returned update is :math:`\theta' - \theta`. These are optax's ``lookahead``'s fast
    parameters step for step (optax carries both sets as ``LookaheadParams``). ``update``
    needs ``params``. ``reset_state`` re-initialises the fast optimizer's state at each sync.

    Raises:
        TypeError: ``sync_period`` is not an int >= 1.
        HyperparameterError: ``slow_step_size`` is outside [0, 1].
    """
    if isinstance(sync_period, bool) or not isinstance(sync_period, int) or sync_period < 1:
        raise TypeError(f"sync_period={sync_period!r} must be an int >= 1")
    parse_domain("[0, 1]").validate("slow_step_size", slow_step_size)

    def init(params: Any) -> LookaheadState:
        slow = optree.tree_map(
            lambda p: None if p is None else p.detach().clone(), params, none_is_leaf=True
        )
        return LookaheadState(fast_optimizer.init(params), slow, 0)

    def update(
        updates: Any, state: LookaheadState, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, LookaheadState]:
        if params is None:
            raise ValueError("lookahead needs params= in update (to move the slow weights)")
        fast_updates, fast_state = fast_optimizer.update(
            updates, state.fast_state, params=params, inplace=False
        )
        step = state.steps_since_sync + 1
        if step < sync_period:
            return fast_updates, LookaheadState(fast_state, state.slow, step)
        fast = apply_updates(params, fast_updates, inplace=False)
        slow = optree.tree_map(
            lambda s, f: None if s is None else s + slow_step_size * (f - s),
            state.slow,
            fast,
            none_is_leaf=True,
        )
        synced = optree.tree_map(
            lambda s, p: None if s is None else s - p, slow, params, none_is_leaf=True
        )
        if reset_state:
            fast_state = fast_optimizer.init(params)
        return synced, LookaheadState(fast_state, slow, 0)

    return GradientTransformation(init, update)
