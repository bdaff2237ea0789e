"""optax's transforms that scale each parameter tensor by a statistic of the whole tensor.

The maths is in :mod:`optcompile.rules.trust_ratio` and :mod:`optcompile.rules.clipping`; the
statistics (norms per tensor) are computed as in :mod:`optcompile.leafstats`. Each is one fused
kernel with the rules after it in a chain (it starts a new unit: its statistics are of the
updates that enter it).
"""

from __future__ import annotations

from typing import Any

from optcompile.fused import RuleTransformation, from_rule
from optcompile.rules import clipping as _clipping
from optcompile.rules import trust_ratio as _trust_ratio

__all__ = ["scale_by_trust_ratio", "clip_by_block_rms", "adaptive_grad_clip"]


def scale_by_trust_ratio(
    min_norm: Any = 0.0,
    trust_coefficient: Any = 1.0,
    eps: Any = 0.0,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    r"""Scale each tensor's update by its trust ratio, as ``optax.scale_by_trust_ratio``.

    .. math:: u' = u \cdot c\,\frac{\max(\lVert p \rVert_2, n_{min})}
        {\max(\lVert u \rVert_2, n_{min}) + \epsilon} \quad (1 \text{ where a norm is } 0)

    Needs ``params=`` in ``update``. See
    :data:`optcompile.rules.trust_ratio.scale_by_trust_ratio`.

    Raises:
        HyperparameterError: ``min_norm`` or ``eps`` is negative.
    """
    return from_rule(
        _trust_ratio.scale_by_trust_ratio,
        min_norm=min_norm,
        trust_coefficient=trust_coefficient,
        eps=eps,
        backend=backend,
    )


def clip_by_block_rms(threshold: Any, *, backend: str | None = None) -> RuleTransformation:
    r"""Clip each tensor's update to an RMS of at most ``threshold``, as optax.

    .. math:: u' = u / \max\left(1, \sqrt{\mathrm{mean}(u^2)} / \tau\right)

    Raises:
        HyperparameterError: ``threshold`` is not positive.
    """
    return from_rule(_clipping.clip_by_block_rms, threshold=threshold, backend=backend)


def adaptive_grad_clip(
    clipping: Any, eps: Any = 1e-3, *, backend: str | None = None
) -> RuleTransformation:
    r"""Adaptive gradient clipping, unit-wise, as ``optax.adaptive_grad_clip`` (default axes).

    .. math:: u' = u \cdot \min\left(1, \frac{\lambda \max(\lVert p \rVert_{unit}, \epsilon)}
        {\max(\lVert u \rVert_{unit}, 10^{-6})}\right)

    Units follow optax's default axes (JAX layouts; see
    :func:`optcompile.leafstats.unitwise_norm`): on a PyTorch ``(out, in)`` weight a unit is an
    input column. optax's ``axis=`` override is not offered. Needs ``params=`` in ``update``.

    Raises:
        HyperparameterError: ``clipping`` or ``eps`` is negative.
        ValueError: (at the step) a leaf has more than 5 dimensions.
    """
    return from_rule(_clipping.adaptive_grad_clip, clipping=clipping, eps=eps, backend=backend)
