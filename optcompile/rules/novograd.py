"""NovoGrad (Ginsburg et al., 2019): layer-wise second moments, as ``optax.novograd``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import chain_of, flip_and_decay, neg_lr
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.leafstats import UPDATE_SQUARED_NORM
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_novograd", "novograd"]


@rule(
    state=("mu", "nu"),
    stats={"g_sq_norm": UPDATE_SQUARED_NORM},
    domains={"b1": "[0, 1)", "b2": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0",
             "weight_decay": ">= 0"},
    state_name="ScaleByNovogradState",
)  # fmt: skip
def scale_by_novograd(g, mu, nu, *, b1=0.9, b2=0.25, eps=1e-8, eps_root=0.0, weight_decay=0.0,
                      params, count, g_sq_norm):  # fmt: skip
    r"""NovoGrad preconditioning, as optax's ``scale_by_novograd``.

    .. math:: s = \lVert g \rVert_2^2 \text{ (per tensor)}, \quad
        \nu_1 = s, \;\; \nu_t = \beta_2 \nu_{t-1} + (1 - \beta_2) s, \\
        d_t = \frac{g}{\sqrt{\nu_t + \epsilon_{root}} + \epsilon} + \lambda p, \quad
        m_1 = d_1, \;\; m_t = \beta_1 m_{t-1} + d_t, \quad u = m_t

    :math:`\nu` is one number per parameter tensor; it is kept as a buffer of the tensor's
    shape (every element equal), since kernels are elementwise: the memory of one Adam moment.
    """
    first = sym.eq(count, 1)
    nu = sym.where(first, g_sq_norm, b2 * nu + (1 - b2) * g_sq_norm)
    d = g / (sym.sqrt(nu + eps_root) + eps) + weight_decay * params
    mu = sym.where(first, d, b1 * mu + d)
    return mu, (mu, nu)


@optimizer(
    classes=("NovoGrad", "Novograd"),
    domains={"betas": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"},
    meta_defaults={"moment_requires_grad": True},
)
def novograd(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.25),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""NovoGrad (Ginsburg et al., 2019), as ``optax.novograd``.

    .. math:: \Delta p = -\eta\, m_t

    with :math:`m_t` from :data:`scale_by_novograd` (weight decay inside the moment, as optax).
    The second moment is of each parameter tensor's squared gradient norm (a per-leaf
    statistic), so its meta-gradient flows through the norm.
    """
    return chain_of(
        flip_and_decay(0.0, maximize, backend),
        from_rule(
            scale_by_novograd,
            b1=betas[0],
            b2=betas[1],
            eps=eps,
            eps_root=eps_root,
            weight_decay=weight_decay,
            moment_requires_grad=moment_requires_grad,
            backend=backend,
        ),
        neg_lr(lr, backend),
    )
