"""Second-moment scalers: RMSProp (plain and centred), AdaGrad, AdaDelta."""

from __future__ import annotations

from optcompile import sym
from optcompile.rule import rule

__all__ = ["scale_by_rms", "scale_by_stddev", "scale_by_rss", "scale_by_adadelta"]


@rule(
    state=("nu",),
    init={"nu": "initial_scale"},
    domains={"alpha": "[0, 1]", "eps": ">= 0"},
    state_name="ScaleByRmsState",
)
def scale_by_rms(g, nu, *, alpha=0.9, eps=1e-8, initial_scale=0.0):
    r"""RMSProp (Tieleman & Hinton, 2012).

    .. math::
        \nu_t = \alpha \nu_{t-1} + (1 - \alpha) g^2, \quad u = \frac{g}{\sqrt{\nu_t} + \epsilon}
    """
    nu = alpha * nu + (1 - alpha) * g**2
    return g / (sym.sqrt(nu) + eps), (nu,)


@rule(
    state=("mu", "nu"),
    init={"nu": "initial_scale"},
    domains={"alpha": "[0, 1]", "eps": ">= 0"},
    state_name="ScaleByRStdDevState",
)
def scale_by_stddev(g, mu, nu, *, alpha=0.9, eps=1e-8, initial_scale=0.0):
    r"""Centred RMSProp (Graves, 2013): divide by a running standard deviation.

    .. math:: \mu_t = \alpha \mu_{t-1} + (1-\alpha) g, \quad
        u = \frac{g}{\sqrt{\nu_t - \mu_t^2} + \epsilon}
    """
    mu = alpha * mu + (1 - alpha) * g
    nu = alpha * nu + (1 - alpha) * g**2
    return g / (sym.sqrt(nu - mu**2) + eps), (mu, nu)


@rule(
    state=("sum_of_squares",),
    init={"sum_of_squares": "initial_accumulator_value"},
    domains={"eps": ">= 0", "lr_decay": ">= 0", "initial_accumulator_value": ">= 0"},
    state_name="ScaleByRssState",
)
def scale_by_rss(
    g, sum_of_squares, *, eps=1e-10, lr_decay=0.0, initial_accumulator_value=0.0, count
):
    r"""AdaGrad (Duchi et al., 2011) with torch's learning-rate decay.

    .. math:: s_t = s_{t-1} + g^2, \quad
        u = \frac{g}{(\sqrt{s_t} + \epsilon)(1 + (t - 1)\,\delta)}
    """
    sum_of_squares = sum_of_squares + g**2
    return g / ((sym.sqrt(sum_of_squares) + eps) * (1 + (count - 1) * lr_decay)), (sum_of_squares,)


@rule(
    state=("mu", "nu"), domains={"rho": "[0, 1]", "eps": ">= 0"}, state_name="ScaleByAdadeltaState"
)
def scale_by_adadelta(g, mu, nu, *, rho=0.9, eps=1e-6):
    r"""AdaDelta (Zeiler, 2012): ``mu`` is the mean square gradient, ``nu`` of the deltas.

    .. math:: \mu_t = \rho\mu_{t-1} + (1-\rho) g^2, \quad
        \delta = \frac{\sqrt{\nu_{t-1} + \epsilon}}{\sqrt{\mu_t + \epsilon}} g, \quad
        \nu_t = \rho\nu_{t-1} + (1-\rho)\delta^2
    """
    mu = rho * mu + (1 - rho) * g**2
    delta = sym.sqrt(nu + eps) / sym.sqrt(mu + eps) * g
    nu = rho * nu + (1 - rho) * delta**2
    return delta, (mu, nu)
