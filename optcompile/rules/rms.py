"""Second-moment scalers and their optimizers: RMSProp (plain and centred), AdaGrad, AdaDelta."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import chain_of, flip_and_decay, is_zero, neg_lr, preconditioned
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.registry import optimizer
from optcompile.rule import rule
from optcompile.rules.sgd import trace, trace_nesterov

__all__ = [
    "scale_by_rms", "scale_by_stddev", "scale_by_rss", "scale_by_adadelta",
    "adagrad", "adadelta", "rmsprop",
]  # fmt: skip


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


@optimizer(
    classes=("Adagrad", "AdaGrad"),
    domains={"lr_decay": ">= 0", "initial_accumulator_value": ">= 0", "eps": ">= 0"},
)
def adagrad(
    lr: Any = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaGrad (Duchi et al., 2011), as ``torch.optim.Adagrad``."""
    return preconditioned(
        scale_by_rss,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        eps=eps,
        lr_decay=lr_decay,
        initial_accumulator_value=initial_accumulator_value,
    )


@optimizer(
    classes=("Adadelta", "AdaDelta"),
    domains={"rho": "[0, 1]", "eps": ">= 0"},
    class_defaults={"lr": 1.0},
    meta_defaults={"moment_requires_grad": True},
)
def adadelta(
    lr: Any = 1e-3,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaDelta (Zeiler, 2012), as ``torch.optim.Adadelta``."""
    return preconditioned(
        scale_by_adadelta,
        lr=lr,
        weight_decay=weight_decay,
        backend=backend,
        rho=rho,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
    )


@optimizer(
    classes=("RMSprop", "RMSProp"),
    domains={"alpha": "[0, 1]", "eps": ">= 0", "momentum": ">= 0", "initial_scale": ">= 0"},
)
def rmsprop(
    lr: Any = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    initial_scale: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""RMSProp (Tieleman & Hinton, 2012), plain or centred, with momentum (torch.optim.RMSprop)."""
    scaler = scale_by_stddev if centered else scale_by_rms
    momentum_tx = None
    if not is_zero(momentum):
        momentum_tx = from_rule(
            trace_nesterov if nesterov else trace, momentum=momentum, backend=backend
        )
    return chain_of(
        flip_and_decay(weight_decay, maximize, backend),
        from_rule(scaler, alpha=alpha, eps=eps, initial_scale=initial_scale, backend=backend),
        momentum_tx,
        neg_lr(lr, backend),
    )
