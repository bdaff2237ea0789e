"""Yogi (Zaheer et al., 2018): Adam with an additive second-moment update, as ``optax.yogi``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import preconditioned
from optcompile.base import GradientTransformation
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_yogi", "yogi"]


@rule(
    state=("mu", "nu"),
    init={"mu": "initial_accumulator_value", "nu": "initial_accumulator_value"},
    domains={
        "b1": "[0, 1)",
        "b2": "[0, 1)",
        "eps": ">= 0",
        "eps_root": ">= 0",
        "initial_accumulator_value": "> 0",
    },
    state_name="ScaleByYogiState",
)
def scale_by_yogi(
    g, mu, nu, *, b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, initial_accumulator_value=1e-6, count
):
    r"""Yogi preconditioning: the second moment moves by :math:`(1-\beta_2) g^2` toward it.

    .. math:: v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g^2)\, g^2, \quad
        u = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Both moments start at ``initial_accumulator_value`` (> 0, as in optax).
    """
    mu = b1 * mu + (1 - b1) * g
    nu = nu - (1 - b2) * sym.sign(nu - g**2) * g**2
    mu_hat = mu / (1 - b1**count)
    return mu_hat / (sym.sqrt(nu / (1 - b2**count) + eps_root) + eps), (mu, nu)


@optimizer(
    classes=("Yogi",),
    domains={"betas": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"},
    meta_defaults={"moment_requires_grad": True},
)
def yogi(
    lr: Any = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Yogi (Zaheer et al., 2018), L2 weight decay added to the gradient; as ``optax.yogi``.

    .. math:: \Delta p = -\eta \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
    """
    return preconditioned(
        scale_by_yogi,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        eps_root=eps_root,
        initial_accumulator_value=initial_accumulator_value,
        moment_requires_grad=moment_requires_grad,
    )
