"""Elementwise transforms of optax that are rules: the exponential moving average, ``clip``."""

from __future__ import annotations

from optcompile import sym
from optcompile.rule import rule

__all__ = ["ema_debiased", "ema_biased", "clip_elementwise"]


@rule(state=("ema",), domains={"decay": "[0, 1)"}, state_name="EmaState")
def ema_debiased(g, ema, *, decay=0.9, count):
    r"""Exponential moving average of the updates, debiased (optax's ``ema(debias=True)``).

    .. math:: e_t = \delta e_{t-1} + (1 - \delta) g, \quad u = e_t / (1 - \delta^t)
    """
    ema = decay * ema + (1 - decay) * g
    return ema / (1 - decay**count), (ema,)


@rule(state=("ema",), domains={"decay": "[0, 1]"}, state_name="EmaState")
def ema_biased(g, ema, *, decay=0.9):
    r"""Exponential moving average of the updates, not debiased.

    .. math:: u = e_t = \delta e_{t-1} + (1 - \delta) g
    """
    ema = decay * ema + (1 - decay) * g
    return ema, (ema,)


@rule(domains={"max_delta": ">= 0"})
def clip_elementwise(g, *, max_delta=1.0):
    r"""Clip every element to :math:`[-\delta, \delta]`: :math:`u = \min(\max(g, -\delta), \delta)`.

    The derivative w.r.t. ``g`` is 1 inside the interval and 0 outside (ties split half and
    half, the convention of ``maximum``/``minimum``).
    """
    return sym.minimum(sym.maximum(g, -max_delta), max_delta), ()
