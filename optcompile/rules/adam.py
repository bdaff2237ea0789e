"""Adam and its relatives that share Adam's moments: AMSGrad, AdamW, AdaMax, RAdam."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import accelerated, preconditioned
from optcompile.base import GradientTransformation
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = [
    "scale_by_adam", "scale_by_amsgrad", "scale_by_adamax", "scale_by_radam",
    "adam", "adamw", "adamax", "radam",
]  # fmt: skip

_BETAS = {"b1": "[0, 1)", "b2": "[0, 1)", "eps": ">= 0"}


@rule(state=("mu", "nu"), domains={**_BETAS, "eps_root": ">= 0"}, state_name="ScaleByAdamState")
def scale_by_adam(g, mu, nu, *, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, count):
    r"""Adam preconditioning (Kingma & Ba, 2014).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g, \quad v_t = \beta_2 v_{t-1} + (1 - \beta_2) g^2,
        \quad u = \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t) + \epsilon_{root}}
        + \epsilon}
    """
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    mu_hat = mu / (1 - b1**count)
    nu_hat = nu / (1 - b2**count)
    return mu_hat / (sym.sqrt(nu_hat + eps_root) + eps), (mu, nu)


@rule(
    state=("mu", "nu", "nu_max"),
    domains={**_BETAS, "eps_root": ">= 0"},
    state_name="ScaleByAmsgradState",
)
def scale_by_amsgrad(g, mu, nu, nu_max, *, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, count):
    r"""AMSGrad (Reddi et al., 2018) as ``torch.optim.Adam(amsgrad=True)``: Adam divided by the
    running maximum of the (uncorrected) second moment.

    .. math:: \hat v^{max}_t = \max(\hat v^{max}_{t-1}, v_t), \quad
        u = \frac{m_t / (1 - \beta_1^t)}{\sqrt{v^{max}_t / (1 - \beta_2^t) + \epsilon_{root}}
        + \epsilon}
    """
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    nu_max = sym.maximum(nu_max, nu)
    mu_hat = mu / (1 - b1**count)
    return mu_hat / (sym.sqrt(nu_max / (1 - b2**count) + eps_root) + eps), (mu, nu, nu_max)


@rule(state=("mu", "nu"), domains=_BETAS, state_name="ScaleByAdamaxState")
def scale_by_adamax(g, mu, nu, *, b1=0.9, b2=0.999, eps=1e-6, count):
    r"""AdaMax, Adam in the infinity norm (Kingma & Ba, 2014, sec. 7).

    .. math:: m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \quad
        u_t = \max(\beta_2 u_{t-1}, |g| + \epsilon), \quad u = \frac{m_t}{u_t (1 - \beta_1^t)}
    """
    mu = b1 * mu + (1 - b1) * g
    nu = sym.maximum(b2 * nu, sym.abs(g) + eps)
    return mu / (nu * (1 - b1**count)), (mu, nu)


@rule(state=("mu", "nu"), domains=_BETAS, state_name="ScaleByRAdamState")
def scale_by_radam(g, mu, nu, *, b1=0.9, b2=0.999, eps=1e-6, count):
    r"""Rectified Adam (Liu et al., 2020), as in ``torch.optim.RAdam``.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \quad
        u = \begin{cases} \hat m_t \, r_t \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}
        & \rho_t > 5 \\ \hat m_t & \text{otherwise} \end{cases}, \quad
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)
        \rho_t}}
    """
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    mu_hat = mu / (1 - b1**count)
    bias2 = 1 - b2**count
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * count * b2**count / bias2
    ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    # The square root is negative-valued while rho <= 5 (steps 2-5): guard its input as well as
    # the output, so that the unused branch holds no NaN even when differentiated twice.
    rect = sym.sqrt(sym.where(rho > 5, ratio, 1))
    adapted = mu_hat * rect * sym.sqrt(bias2) / (sym.sqrt(nu) + eps)
    return sym.where(rho > 5, adapted, mu_hat), (mu, nu)


_ADAM_DOMAINS = {"betas": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"}


@optimizer(classes=("Adam",), domains=_ADAM_DOMAINS, meta_defaults={"moment_requires_grad": True})
def adam(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
    amsgrad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2014), L2 weight decay added to the gradient; as ``torch.optim.Adam``.

    .. math:: \Delta p = -\eta \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    ``amsgrad=True`` divides by the running maximum of :math:`v_t` instead
    (:data:`scale_by_amsgrad`). ``use_accelerated_op=True`` asks for the native C++/CUDA kernel
    (``backend="native"``, plain Adam only); the numbers are the same on every backend, and the
    backward is NaN-safe on all of them.
    """
    return preconditioned(
        scale_by_amsgrad if amsgrad else scale_by_adam,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        rule_backend=accelerated(use_accelerated_op and not amsgrad, backend),
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
    )


@optimizer(classes=("AdamW",), domains=_ADAM_DOMAINS)
def adamw(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    eps_root: float = 0.0,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
    amsgrad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdamW (Loshchilov & Hutter, 2019): decoupled weight decay, as ``torch.optim.AdamW``.

    .. math:: \Delta p = -\eta \left(\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
        + \lambda p\right)

    ``mask`` (a pytree of bools like the params, or a callable params -> such a tree) limits the
    decay to the leaves where it is True; ``amsgrad`` as in :func:`adam`.
    """
    return preconditioned(
        scale_by_amsgrad if amsgrad else scale_by_adam,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        rule_backend=accelerated(use_accelerated_op and not amsgrad, backend),
        decoupled=True,
        mask=mask,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
    )


@optimizer(
    classes=("Adamax", "AdaMax"),
    domains={"betas": "[0, 1)", "eps": ">= 0"},
    class_defaults={"lr": 2e-3, "eps": 1e-8},
    meta_defaults={"moment_requires_grad": True},
)
def adamax(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaMax (Kingma & Ba, 2014), as ``torch.optim.Adamax``."""
    return preconditioned(
        scale_by_adamax,
        lr=lr,
        weight_decay=weight_decay,
        backend=backend,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        moment_requires_grad=moment_requires_grad,
    )


@optimizer(
    classes=("RAdam",),
    domains={"betas": "[0, 1)", "eps": ">= 0"},
    class_defaults={"eps": 1e-8},
    meta_defaults={"moment_requires_grad": True},
)
def radam(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2020), as ``torch.optim.RAdam``."""
    return preconditioned(
        scale_by_radam,
        lr=lr,
        weight_decay=weight_decay,
        backend=backend,
        b1=betas[0],
        b2=betas[1],
        eps=eps,
        moment_requires_grad=moment_requires_grad,
    )
