"""Adam and its relatives that share Adam's moments: AdaMax, RAdam."""

from __future__ import annotations

from optcompile import sym
from optcompile.rule import rule

__all__ = ["scale_by_adam", "scale_by_adamax", "scale_by_radam"]

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
