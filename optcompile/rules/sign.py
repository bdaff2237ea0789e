"""Sign SGD (Bernstein et al., 2018): step by the sign of the gradient, as ``optax.sign_sgd``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import chain_of, flip_and_decay, neg_lr, straight_through_sign
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_sign", "sign_sgd"]


@rule
def scale_by_sign(g):
    r"""The sign of the update: :math:`u = \operatorname{sign}(g)`.

    Its derivative is 0 (almost everywhere): a meta-gradient through it is zero by convention.
    """
    return sym.sign(g), ()


@optimizer(classes=("SignSGD",))
def sign_sgd(
    lr: Any = 1e-3,
    weight_decay: float = 0.0,
    *,
    straight_through: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Sign SGD, as ``optax.sign_sgd``: :math:`\Delta p = -\eta\operatorname{sign}(g + \lambda p)`.

    Meta-gradients: the sign has derivative 0, so by convention the meta-gradient w.r.t. the
    data is exactly zero (the one w.r.t. ``lr`` is not). ``straight_through=True``
    differentiates the sign as the identity (straight-through estimator) instead.
    """
    sign_tx = (
        straight_through_sign() if straight_through else from_rule(scale_by_sign, backend=backend)
    )
    return chain_of(flip_and_decay(weight_decay, maximize, backend), sign_tx, neg_lr(lr, backend))
