"""Momentum (heavy ball and Nesterov), as in ``torch.optim.SGD``."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import chain_of, flip_and_decay, is_zero, neg_lr
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.lowering.check import numbers_of
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["trace", "trace_nesterov", "sgd"]

_DOMAINS = {"momentum": ">= 0", "dampening": "[0, 1]"}


@rule(state=("trace",), domains=_DOMAINS, state_name="TraceState")
def trace(g, trace, *, momentum=0.9, dampening=0.0, count):
    r"""Heavy-ball momentum (Polyak, 1964) with torch's first step.

    .. math:: b_1 = g_1, \qquad b_t = \mu b_{t-1} + (1 - \tau) g_t, \qquad u_t = b_t
    """
    new_trace = sym.where(sym.eq(count, 1), g, momentum * trace + (1 - dampening) * g)
    return new_trace, (new_trace,)


@rule(state=("trace",), domains=_DOMAINS, state_name="TraceState")
def trace_nesterov(g, trace, *, momentum=0.9, dampening=0.0, count):
    r"""Nesterov momentum (Sutskever et al., 2013) as in ``torch.optim.SGD(nesterov=True)``.

    .. math:: b_t \text{ as in } \texttt{trace}, \qquad u_t = g_t + \mu b_t
    """
    new_trace = sym.where(sym.eq(count, 1), g, momentum * trace + (1 - dampening) * g)
    return g + momentum * new_trace, (new_trace,)


# TorchOpt's SGD classes take every argument positionally, in this order (weight_decay before
# dampening, unlike sgd()); `moment_requires_grad` is dropped from the classic SGD.
@optimizer(
    classes=("SGD",),
    domains={"momentum": ">= 0", "dampening": "[0, 1]"},
    class_order=(
        "lr", "momentum", "weight_decay", "dampening", "nesterov", "moment_requires_grad",
        "maximize",
    ),
    meta_defaults={"moment_requires_grad": True},
)  # fmt: skip
def sgd(
    lr: Any,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    .. math:: b_t = \mu b_{t-1} + (1-\tau)(g + \lambda p) \;(b_1 = g_1 + \lambda p), \quad
        \Delta p = -\eta\, b_t \;\text{or}\; -\eta (g + \mu b_t) \text{ (Nesterov)}

    Raises:
        HyperparameterError: a negative lr, momentum or weight_decay; dampening outside [0, 1].
        ValueError: nesterov without momentum, or with dampening.
    """
    if nesterov and (numbers_of(momentum) == [0.0] or numbers_of(dampening) != [0.0]):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
    momentum_tx = None
    if not is_zero(momentum):
        momentum_tx = from_rule(
            trace_nesterov if nesterov else trace,
            momentum=momentum,
            dampening=dampening,
            moment_requires_grad=moment_requires_grad,
            backend=backend,
        )
    return chain_of(
        flip_and_decay(weight_decay, maximize, backend), momentum_tx, neg_lr(lr, backend)
    )
