"""LAMB (You et al., 2019): Adam with a layer-wise trust ratio, as ``optax.lamb``."""

from __future__ import annotations

from typing import Any

from optcompile.assemble import chain_of, decoupled_decay, flip_and_decay, neg_lr
from optcompile.base import GradientTransformation
from optcompile.fused import from_rule
from optcompile.registry import optimizer
from optcompile.rules.adam import scale_by_adam
from optcompile.rules.trust_ratio import scale_by_trust_ratio

__all__ = ["lamb"]


@optimizer(
    classes=("Lamb", "LAMB"),
    domains={"betas": "[0, 1)", "eps": ">= 0", "eps_root": ">= 0"},
    meta_defaults={"moment_requires_grad": True},
)
def lamb(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""LAMB (You et al., 2019), as ``optax.lamb``.

    .. math:: r_t = \mathrm{adam}(g)_t + \lambda p, \qquad
        \Delta p = -\eta\, \frac{\lVert p \rVert_2}{\lVert r_t \rVert_2}\, r_t

    with the norms per parameter tensor and the ratio taken as 1 where either norm is 0 (see
    :data:`optcompile.rules.trust_ratio.scale_by_trust_ratio`). Two fused kernels per step:
    Adam with the decay, then the trust ratio with the learning rate (the ratio needs the norm
    of the first kernel's output). ``mask`` limits the weight decay to some leaves.
    """
    return chain_of(
        flip_and_decay(0.0, maximize, backend),
        from_rule(
            scale_by_adam,
            b1=betas[0],
            b2=betas[1],
            eps=eps,
            eps_root=eps_root,
            moment_requires_grad=moment_requires_grad,
            backend=backend,
        ),
        decoupled_decay(weight_decay, mask, backend),
        from_rule(scale_by_trust_ratio, backend=backend),
        neg_lr(lr, backend),
    )
