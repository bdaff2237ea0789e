"""Adan (Xie et al., 2022): adaptive Nesterov momentum, as ``optax.adan``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import preconditioned
from optcompile.base import GradientTransformation
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_adan", "adan"]


@rule(
    state=("m", "v", "n", "prev"),
    domains={"b1": "[0, 1)", "b2": "[0, 1)", "b3": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"},
    state_name="ScaleByAdanState",
)
def scale_by_adan(g, m, v, n, prev, *, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, count):
    r"""Adan preconditioning (Algorithm 1 of the paper, optax's decay-rate convention).

    .. math:: \delta_t = g_t - g_{t-1} \;(\delta_1 = 0), \quad
        m_t = \beta_1 m + (1-\beta_1) g, \quad v_t = \beta_2 v + (1-\beta_2)\delta_t, \quad
        n_t = \beta_3 n + (1-\beta_3)(g + (1-\beta_2)\delta_t)^2, \\
        u = \frac{\hat m_t + (1-\beta_2)\hat v_t}{\sqrt{\hat n_t + \epsilon_{root}} + \epsilon}
        \quad (\hat x_t = x_t / (1 - \beta^t))
    """
    diff = sym.where(sym.eq(count, 1), 0, g - prev)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * diff
    n = b3 * n + (1 - b3) * (g + (1 - b2) * diff) ** 2
    m_hat = m / (1 - b1**count)
    v_hat = v / (1 - b2**count)
    n_hat = n / (1 - b3**count)
    return (m_hat + (1 - b2) * v_hat) / (sym.sqrt(n_hat + eps_root) + eps), (m, v, n, g)


@optimizer(
    classes=("Adan",),
    domains={"betas": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"},
    meta_defaults={"moment_requires_grad": True},
)
def adan(
    lr: Any = 1e-3,
    betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 1e-8,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Adan (Xie et al., 2022) with decoupled weight decay, as ``optax.adan``.

    .. math:: \Delta p = -\eta\,(u_t + \lambda p)

    ``betas`` are the decay rates of the gradient, gradient-difference and squared-term averages
    (optax's convention: the paper's :math:`1 - \beta`).
    """
    return preconditioned(
        scale_by_adan,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        decoupled=True,
        mask=mask,
        b1=betas[0],
        b2=betas[1],
        b3=betas[2],
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
    )
