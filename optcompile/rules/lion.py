"""Lion (Chen et al., 2023): the sign of an interpolated momentum, as ``optax.lion``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import (
    chain_of,
    decoupled_decay,
    flip_and_decay,
    neg_lr,
    straight_through_sign,
)
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_lion", "lion_direction", "lion"]

_DOMAINS = {"b1": "[0, 1]", "b2": "[0, 1]"}


@rule(state=("mu",), domains=_DOMAINS, state_name="ScaleByLionState")
def scale_by_lion(g, mu, *, b1=0.9, b2=0.99):
    r"""Lion's update: the sign of an interpolation of momentum and gradient.

    .. math:: u = \operatorname{sign}(\beta_1 m_{t-1} + (1 - \beta_1) g), \quad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g

    The sign's derivative is 0 (almost everywhere), so the meta-gradient w.r.t. the data (and
    the gradients) through this rule is exactly zero by convention; :func:`lion` with
    ``straight_through=True`` uses :data:`lion_direction` and a straight-through sign instead.
    """
    direction = (1 - b1) * g + b1 * mu
    return sym.sign(direction), (b2 * mu + (1 - b2) * g,)


@rule(state=("mu",), domains=_DOMAINS, state_name="ScaleByLionState")
def lion_direction(g, mu, *, b1=0.9, b2=0.99):
    r"""Lion before its sign: :math:`u = \beta_1 m_{t-1} + (1 - \beta_1) g` (momentum as Lion's)."""
    return (1 - b1) * g + b1 * mu, (b2 * mu + (1 - b2) * g,)


@optimizer(classes=("Lion",), domains={"betas": "[0, 1]"})
def lion(
    lr: Any = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    *,
    straight_through: bool = False,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Lion (Chen et al., 2023) with decoupled weight decay, as ``optax.lion``.

    .. math:: \Delta p = -\eta\,(\operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g)
        + \lambda p), \quad m_t = \beta_2 m_{t-1} + (1 - \beta_2) g

    Meta-gradients: the sign has derivative 0, so by convention the meta-gradient w.r.t. the
    data (anything that reaches the parameters only through the gradients) is exactly zero;
    hyper-gradients w.r.t. ``lr`` and ``weight_decay`` are not. ``straight_through=True``
    differentiates the sign as the identity (straight-through estimator), which gives a
    non-zero, biased meta-gradient; it splits the fused kernel in two.
    """
    if not straight_through:
        rule_tx = from_rule(
            scale_by_lion,
            b1=betas[0],
            b2=betas[1],
            moment_requires_grad=moment_requires_grad,
            backend=backend,
        )
        sign_tx = None
    else:
        rule_tx = from_rule(
            lion_direction,
            b1=betas[0],
            b2=betas[1],
            moment_requires_grad=moment_requires_grad,
            backend=backend,
        )
        sign_tx = straight_through_sign()
    return chain_of(
        flip_and_decay(0.0, maximize, backend),
        rule_tx,
        sign_tx,
        decoupled_decay(weight_decay, None, backend),
        neg_lr(lr, backend),
    )
