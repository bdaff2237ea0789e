"""LARS (You et al., 2017): layer-wise trust ratio with momentum, as ``optax.lars``."""

from __future__ import annotations

from typing import Any

from optcompile.assemble import chain_of, decoupled_decay, flip_and_decay, neg_lr
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.masking import masked
from optcompile.registry import optimizer
from optcompile.rules.sgd import trace, trace_nesterov
from optcompile.rules.trust_ratio import scale_by_trust_ratio

__all__ = ["lars"]


@optimizer(
    classes=("LARS", "Lars"),
    domains={"trust_coefficient": ">= 0", "eps": ">= 0", "momentum": ">= 0"},
    meta_defaults={"moment_requires_grad": True},
)
def lars(
    lr: Any = 1.0,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    *,
    weight_decay_mask: Any = None,
    trust_ratio_mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""LARS (You et al., 2017), as ``optax.lars`` (momentum after the learning rate).

    .. math:: r = g + \lambda p, \quad
        s = -\eta\, \frac{c \lVert p \rVert_2}{\lVert r \rVert_2 + \epsilon}\, r, \quad
        b_t = \mu b_{t-1} + s, \quad \Delta p = b_t \text{ or } s + \mu b_t \text{ (Nesterov)}

    with the norms per parameter tensor and the ratio taken as 1 where either norm is 0.
    ``weight_decay_mask`` and ``trust_ratio_mask`` (pytrees of bools like the params, or
    callables ``params -> mask``; None: every leaf) limit the decay and the trust ratio to some
    leaves, as optax's masks.
    """
    ratio = from_rule(
        scale_by_trust_ratio, trust_coefficient=trust_coefficient, eps=eps, backend=backend
    )
    momentum_tx = from_rule(
        trace_nesterov if nesterov else trace,
        momentum=momentum,
        moment_requires_grad=moment_requires_grad,
        backend=backend,
    )
    return chain_of(
        flip_and_decay(0.0, maximize, backend),
        decoupled_decay(weight_decay, weight_decay_mask, backend),
        ratio if trust_ratio_mask is None else masked(ratio, trust_ratio_mask),
        neg_lr(lr, backend),
        momentum_tx,
    )
