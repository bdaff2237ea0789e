"""NAdam (Dozat, 2016): Adam with Nesterov momentum, as ``torch.optim.NAdam``; NAdamW."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import preconditioned
from optcompile.base import GradientTransformation
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_nadam", "nadam", "nadamw"]


@rule(
    state=("mu", "nu", "mu_product"),
    init={"mu_product": 1.0},
    domains={"b1": "[0, 1)", "b2": "[0, 1)", "eps": ">= 0", "momentum_decay": ">= 0"},
    state_name="ScaleByNadamState",
)
def scale_by_nadam(
    g, mu, nu, mu_product, *, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=4e-3, count
):
    r"""NAdam preconditioning with torch's momentum schedule :math:`\mu_t`.

    .. math:: \mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi}), \quad \Pi_t = \prod_{i \le t} \mu_i,
        \quad u = \frac{(1-\mu_t)\, g / (1 - \Pi_t) + \mu_{t+1} m_t / (1 - \Pi_t \mu_{t+1})}
        {\sqrt{v_t / (1-\beta_2^t)} + \epsilon}

    ``mu_product`` holds :math:`\Pi_t` (the same in every element; torch keeps it per tensor).
    """
    mu_t = b1 * (1 - 0.5 * 0.96 ** (count * momentum_decay))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((count + 1) * momentum_decay))
    mu_product = mu_product * mu_t
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    denom = sym.sqrt(nu / (1 - b2**count)) + eps
    update = (1 - mu_t) / (1 - mu_product) * g / denom + mu_next / (
        1 - mu_product * mu_next
    ) * mu / denom
    return update, (mu, nu, mu_product)


_DOMAINS = {"betas": "[0, 1)", "eps": ">= 0", "momentum_decay": ">= 0"}


@optimizer(classes=("NAdam",), domains=_DOMAINS, meta_defaults={"moment_requires_grad": True})
def nadam(
    lr: Any = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""NAdam (Dozat, 2016), L2 weight decay added to the gradient; as ``torch.optim.NAdam``.

    .. math:: \Delta p = -\eta\, u_t \quad (u_t \text{ of } :data:`scale_by_nadam`)
    """
    return preconditioned(
        scale_by_nadam,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        momentum_decay=momentum_decay,
        moment_requires_grad=moment_requires_grad,
    )


@optimizer(classes=("NAdamW",), domains=_DOMAINS, meta_defaults={"moment_requires_grad": True})
def nadamw(
    lr: Any = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    momentum_decay: float = 4e-3,
    *,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""NAdam with decoupled weight decay, as ``torch.optim.NAdam(decoupled_weight_decay=True)``.

    .. math:: \Delta p = -\eta\,(u_t + \lambda p)

    ``mask`` limits the decay to the leaves where it is True (see :func:`optcompile.adamw`).
    """
    return preconditioned(
        scale_by_nadam,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        decoupled=True,
        mask=mask,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        momentum_decay=momentum_decay,
        moment_requires_grad=moment_requires_grad,
    )
