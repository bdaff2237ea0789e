"""RProp (Riedmiller & Braun, 1993): per-element step sizes driven by sign agreement."""

from __future__ import annotations

from typing import Any

from optcompile import sym
from optcompile.assemble import chain_of, flip_and_decay, neg_lr
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.registry import optimizer
from optcompile.rule import rule

__all__ = ["scale_by_rprop", "rprop"]


@rule(
    state=("prev", "step_size"),
    init={"step_size": "lr"},
    domains={
        "lr": ">= 0",
        "eta_minus": "(0, 1]",
        "eta_plus": ">= 1",
        "min_step": ">= 0",
        "max_step": ">= 0",
    },
    state_name="ScaleByRpropState",
)
def scale_by_rprop(g, prev, step_size, *, lr=1e-2, eta_minus=0.5, eta_plus=1.2, min_step=1e-6,
                   max_step=50.0):  # fmt: skip
    r"""RProp as ``torch.optim.Rprop``: grow the step where the gradient keeps its sign.

    .. math:: s = g\, g_{t-1}, \quad \Delta_t = \operatorname{clip}(\Delta_{t-1}\,
        \{\eta_+ (s > 0),\ \eta_- (s < 0),\ 1\}, \Delta_{min}, \Delta_{max}), \quad
        \tilde g = 0 \text{ if } s < 0 \text{ else } g, \quad u = \operatorname{sign}(\tilde g)
        \Delta_t

    The step sizes start at ``lr``. Everything here goes through a sign or a comparison of the
    gradient, whose derivative is 0: the meta-gradient w.r.t. the data is zero by convention.
    """
    agreement = g * prev
    factor = sym.where(agreement > 0, eta_plus, sym.where(agreement < 0, eta_minus, 1))
    step_size = sym.minimum(sym.maximum(step_size * factor, min_step), max_step)
    g = sym.where(agreement < 0, 0, g)
    return sym.sign(g) * step_size, (g, step_size)


@optimizer(
    classes=("Rprop", "RProp"),
    domains={"etas": "> 0", "step_sizes": ">= 0"},
)
def rprop(
    lr: Any = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    *,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""RProp (Riedmiller & Braun, 1993), as ``torch.optim.Rprop``.

    .. math:: \Delta p = -\operatorname{sign}(\tilde g)\, \Delta_t
        \quad (\Delta_t, \tilde g \text{ of } :data:`scale_by_rprop`, \Delta_0 = \eta)

    ``etas = (eta_minus, eta_plus)`` with :math:`0 < \eta_- \le 1 \le \eta_+`;
    ``step_sizes = (min, max)``. The meta-gradient w.r.t. the data is zero by convention (every
    path goes through a sign); the one w.r.t. ``lr`` (the initial step size) is not.
    """
    return chain_of(
        flip_and_decay(0.0, maximize, backend),
        from_rule(
            scale_by_rprop,
            lr=lr,
            eta_minus=etas[0],
            eta_plus=etas[1],
            min_step=step_sizes[0],
            max_step=step_sizes[1],
            backend=backend,
        ),
        neg_lr(1.0, backend),
    )
