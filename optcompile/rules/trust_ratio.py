"""The trust ratio of LARS and LAMB, as optax's ``scale_by_trust_ratio``."""

from __future__ import annotations

from optcompile import sym
from optcompile.leafstats import PARAM_NORM, UPDATE_NORM
from optcompile.rule import rule

__all__ = ["scale_by_trust_ratio"]


# Below this, an update norm counts as zero (see scale_by_trust_ratio).
_NEGLIGIBLE_NORM = 1e-150


@rule(
    stats={"param_norm": PARAM_NORM, "update_norm": UPDATE_NORM},
    domains={"min_norm": ">= 0", "eps": ">= 0"},
)
def scale_by_trust_ratio(u, *, min_norm=0.0, trust_coefficient=1.0, eps=0.0, param_norm,
                         update_norm):  # fmt: skip
    r"""Scale each parameter tensor's update by its trust ratio (You et al., 2017).

    .. math:: \bar p = \max(\lVert p \rVert_2, n_{min}), \quad
        \bar u = \max(\lVert u \rVert_2, n_{min}), \quad
        u' = u \cdot \begin{cases} 1 & \bar p = 0 \text{ or } \bar u = 0 \\
        c\,\bar p / (\bar u + \epsilon) & \text{otherwise} \end{cases}

    The norms are per parameter tensor (per-leaf statistics). As optax's ``safe_norm``, a norm
    clipped to ``min_norm`` has derivative 0; a zero norm selects the constant ratio 1, so a
    tensor with an exactly zero update or parameter keeps a finite update and meta-gradient. An
    update norm below 1e-150 counts as zero (optax: only an exact zero), because the ratio's
    derivative would overflow there.
    """
    p_bar = sym.where(param_norm <= min_norm, min_norm, param_norm)
    u_bar = sym.where(update_norm <= min_norm, min_norm, update_norm)
    # Norms and min_norm are >= 0, so a clipped norm is 0 exactly when norm + min_norm is. An
    # update norm under _NEGLIGIBLE_NORM counts as 0 too: the ratio's derivative, -c p / u^2,
    # would overflow (u^2 underflows to 0 below ~1e-154 in float64) and meet the zero elements
    # of u as inf * 0. The division's input is guarded too, so that higher-order derivatives
    # stay finite as well.
    zero_p = sym.eq(param_norm + min_norm, 0)
    zero_u = update_norm + min_norm <= _NEGLIGIBLE_NORM
    ratio = trust_coefficient * p_bar / (sym.where(zero_u, 1, u_bar) + eps)
    safe = sym.where(zero_p, 1, sym.where(zero_u, 1, ratio))
    return u * safe, ()
