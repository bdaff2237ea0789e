"""AdaBelief (Zhuang et al., 2020): Adam scaled by the belief in the gradient, as ``optax``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import preconditioned
from optcompile.base import GradientTransformation
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_belief", "adabelief"]

_DOMAINS = {"b1": "[0, 1)", "b2": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"}


@rule(state=("mu", "nu"), domains=_DOMAINS, state_name="ScaleByBeliefState")
def scale_by_belief(g, mu, nu, *, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, count):
    r"""AdaBelief preconditioning: the second moment of the prediction error :math:`g - m_t`.

    .. math:: m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \quad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g - m_t)^2 + \epsilon_{root}, \quad
        u = \frac{m_t / (1-\beta_1^t)}{\sqrt{s_t / (1-\beta_2^t)} + \epsilon}
    """
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * (g - mu) ** 2 + eps_root
    mu_hat = mu / (1 - b1**count)
    return mu_hat / (sym.sqrt(nu / (1 - b2**count)) + eps), (mu, nu)


@optimizer(
    classes=("AdaBelief",),
    domains={"betas": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"},
    meta_defaults={"moment_requires_grad": True},
)
def adabelief(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-16,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 1e-16,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaBelief (Zhuang et al., 2020), L2 weight decay added to the gradient; as
    ``optax.adabelief``.

    .. math:: \Delta p = -\eta \frac{\hat m_t}{\sqrt{\hat s_t} + \epsilon}

    ``eps_root > 0`` keeps :math:`s_t` positive, so the meta-gradient is finite even where the
    gradient equals its running mean.
    """
    return preconditioned(
        scale_by_belief,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
    )
