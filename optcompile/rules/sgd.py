"""Momentum (heavy ball and Nesterov), as in ``torch.optim.SGD``."""

from __future__ import annotations

from optcompile import sym
from optcompile.rule import rule

__all__ = ["trace", "trace_nesterov"]

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
