"""Clipping by per-tensor statistics, as optax's ``clip_by_block_rms`` and ``adaptive_grad_clip``.

Each is an elementwise rule fed per-leaf statistics (see :mod:`optcompile.leafstats`); the
transforms with optax's signatures are :func:`optcompile.transform.clip_by_block_rms` and
:func:`optcompile.transform.adaptive_grad_clip`.
"""

from __future__ import annotations

from optcompile import sym
from optcompile.leafstats import PARAM_UNITWISE_NORM, UPDATE_MEAN_SQUARE, UPDATE_UNITWISE_NORM
from optcompile.rule import rule

__all__ = ["clip_by_block_rms", "adaptive_grad_clip"]


@rule(stats={"mean_square": UPDATE_MEAN_SQUARE}, domains={"threshold": "> 0"})
def clip_by_block_rms(u, *, threshold=1.0, mean_square):
    r"""Clip each parameter tensor's update to a root mean square of at most ``threshold``.

    .. math:: u' = \frac{u}{\max\left(1, \sqrt{\mathrm{mean}(u^2)} / \tau\right)}

    with the mean over the whole tensor. The square root's derivative at 0 is taken as 0.
    """
    return u / sym.maximum(1, sym.sqrt(mean_square) / threshold), ()


@rule(
    stats={"g_norm": UPDATE_UNITWISE_NORM, "p_norm": PARAM_UNITWISE_NORM},
    domains={"clipping": ">= 0", "eps": ">= 0"},
)
def adaptive_grad_clip(u, *, clipping=1.0, eps=1e-3, g_norm, p_norm):
    r"""Adaptive gradient clipping (Brock et al., 2021), unit-wise, as optax.

    .. math:: m = \lambda \max(\lVert p \rVert_{unit}, \epsilon), \quad
        u' = \begin{cases} u & \lVert u \rVert_{unit} < m \\
        u \, m / \max(\lVert u \rVert_{unit}, 10^{-6}) & \text{otherwise} \end{cases}

    Units are optax's (:func:`optcompile.leafstats.unitwise_norm`): a scalar or vector is one
    unit; 2-D and 3-D tensors are normed over axis 0, 4-D over axes (0, 1, 2), 5-D over
    (0, 1, 2, 3). Those are JAX's input-major layouts: on a PyTorch ``Linear.weight`` (out, in)
    a unit is an input column, exactly what optax computes for the same array.
    """
    max_norm = clipping * sym.maximum(p_norm, eps)
    clipped = u * (max_norm / sym.maximum(g_norm, 1e-6))
    return sym.where(g_norm < max_norm, u, clipped), ()
