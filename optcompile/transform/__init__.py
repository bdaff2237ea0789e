"""TorchOpt's ``transform`` namespace: the building blocks of the aliases.

Elementwise transforms are rules (see :mod:`optcompile.rules`), so any chain of them fuses into
one kernel. ``masked`` and ``nan_to_num`` are not rules: ``masked`` decides *which* leaves a
rule sees, and ``nan_to_num`` must act on values the rule language cannot test (NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from optcompile.base import EmptyState, GradientTransformation
from optcompile.fused import RuleTransformation, UpdatesStatistic, from_rule
from optcompile.masking import MaskedState, masked
from optcompile.rules import adam as _adam
from optcompile.rules import basic as _basic
from optcompile.rules import registry as _rule_registry
from optcompile.rules import rms as _rms
from optcompile.rules import sgd as _sgd
from optcompile.transform import utils as utils
from optcompile.transform._elementwise import AddNoiseState, add_noise, centralize, clip, ema
from optcompile.transform._leafwise import (
    adaptive_grad_clip,
    clip_by_block_rms,
    scale_by_trust_ratio,
)
from optcompile.transform._wrappers import (
    ApplyIfFiniteState,
    LookaheadState,
    MultiSteps,
    MultiStepsState,
    MultiTransformState,
    apply_if_finite,
    lookahead,
    multi_transform,
    partition,
)

__all__ = [
    "from_rule",
    "RuleTransformation",
    "UpdatesStatistic",
    "scale",
    "scale_by_schedule",
    "trace",
    "add_decayed_weights",
    "masked",
    "MaskedState",
    "nan_to_num",
    "scale_by_adam",
    "scale_by_accelerated_adam",
    "scale_by_adamax",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_stddev",
    "scale_by_rss",
    "scale_by_adadelta",
    # optax's transforms and wrappers
    "ema",
    "clip",
    "centralize",
    "add_noise",
    "AddNoiseState",
    "apply_if_finite",
    "ApplyIfFiniteState",
    "MultiSteps",
    "MultiStepsState",
    "multi_transform",
    "partition",
    "MultiTransformState",
    "lookahead",
    "LookaheadState",
    # per-tensor statistics (optcompile.leafstats)
    "scale_by_trust_ratio",
    "clip_by_block_rms",
    "adaptive_grad_clip",
]


def scale(step_size: Any, *, backend: str | None = None) -> RuleTransformation:
    r"""Multiply updates by ``step_size`` (number, 0-d tensor or schedule): :math:`u = \alpha g`."""
    return from_rule(_basic.scale, step_size=step_size, backend=backend)


def scale_by_schedule(
    step_size_fn: Callable[[Any], Any], *, backend: str | None = None
) -> RuleTransformation:
    r"""Multiply updates by ``step_size_fn(count)`` (0-based count): :math:`u = \alpha_t g`."""
    if not callable(step_size_fn):
        raise TypeError(f"step_size_fn={step_size_fn!r} must be a callable of the step count")
    return from_rule(_basic.scale, step_size=step_size_fn, backend=backend)


def trace(
    momentum: float = 0.9,
    dampening: float = 0.0,
    nesterov: bool = False,
    moment_requires_grad: bool = False,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    """Momentum as in ``torch.optim.SGD``; see :func:`optcompile.rules.sgd.trace`."""
    rule = _sgd.trace_nesterov if nesterov else _sgd.trace
    return from_rule(
        rule,
        momentum=momentum,
        dampening=dampening,
        moment_requires_grad=moment_requires_grad,
        backend=backend,
    )


# The preconditioners, with TorchOpt's positional signatures; the maths is in optcompile.rules.


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    """Adam's preconditioner; see :data:`optcompile.rules.adam.scale_by_adam`."""
    return from_rule(
        _adam.scale_by_adam,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
        backend=backend,
    )


def scale_by_accelerated_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
) -> RuleTransformation:
    """``scale_by_adam`` on the native C++/CUDA backend (TorchOpt's accelerated op)."""
    return scale_by_adam(b1, b2, eps, eps_root, moment_requires_grad, backend="native")


def scale_by_adamax(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    moment_requires_grad: bool = False,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    """AdaMax's preconditioner; see :data:`optcompile.rules.adam.scale_by_adamax`."""
    return from_rule(
        _adam.scale_by_adamax,
        b1=b1,
        b2=b2,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
        backend=backend,
    )


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    moment_requires_grad: bool = False,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    """RAdam's preconditioner; see :data:`optcompile.rules.adam.scale_by_radam`."""
    return from_rule(
        _adam.scale_by_radam,
        b1=b1,
        b2=b2,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
        backend=backend,
    )


def scale_by_adadelta(
    rho: float = 0.9,
    eps: float = 1e-6,
    moment_requires_grad: bool = False,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    """AdaDelta's preconditioner; see :data:`optcompile.rules.rms.scale_by_adadelta`."""
    return from_rule(
        _rms.scale_by_adadelta,
        rho=rho,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
        backend=backend,
    )


def scale_by_rss(
    initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, backend: str | None = None
) -> RuleTransformation:
    """AdaGrad's preconditioner; see :data:`optcompile.rules.rms.scale_by_rss`."""
    return from_rule(
        _rms.scale_by_rss,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        backend=backend,
    )


def scale_by_rms(
    alpha: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0, *, backend: str | None = None
) -> RuleTransformation:
    """RMSProp's preconditioner; see :data:`optcompile.rules.rms.scale_by_rms`."""
    return from_rule(
        _rms.scale_by_rms, alpha=alpha, eps=eps, initial_scale=initial_scale, backend=backend
    )


def scale_by_stddev(
    alpha: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0, *, backend: str | None = None
) -> RuleTransformation:
    """Centred RMSProp's preconditioner; see :data:`optcompile.rules.rms.scale_by_stddev`."""
    return from_rule(
        _rms.scale_by_stddev, alpha=alpha, eps=eps, initial_scale=initial_scale, backend=backend
    )


def add_decayed_weights(
    weight_decay: Any = 0.0, mask: Any = None, *, backend: str | None = None
) -> GradientTransformation:
    r"""Decoupled weight decay :math:`u = g + \lambda p`, optionally on the masked leaves only."""
    tx = from_rule(_basic.add_decayed_weights, weight_decay=weight_decay, backend=backend)
    return tx if mask is None else masked(tx, mask)


def nan_to_num(
    nan: float = 0.0, posinf: float | None = None, neginf: float | None = None
) -> GradientTransformation:
    """Replace NaN and infinities in the updates (``torch.nan_to_num``); in place if asked."""

    def init(params: Any) -> EmptyState:
        return EmptyState()

    def update(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        def fix(g: torch.Tensor) -> torch.Tensor:
            if inplace:
                return g.nan_to_num_(nan=nan, posinf=posinf, neginf=neginf)
            return g.nan_to_num(nan=nan, posinf=posinf, neginf=neginf)

        return optree.tree_map(fix, updates), state

    return GradientTransformation(init, update)


def _export_rules() -> None:
    """Every other built-in ``scale_by_*`` rule under its name (Lion's, Yogi's, ...).

    A rule called with hyper-parameters is a transformation (``scale_by_lion(b1=0.8)``); the
    ones above keep TorchOpt's positional signatures.
    """
    for name, value in _rule_registry().items():
        glue = value.fn.__module__ == _basic.__name__  # scale_by_neg_lr: the aliases' last step
        if name.startswith("scale_by_") and name not in globals() and not glue:
            globals()[name] = value
            __all__.append(name)


_export_rules()
