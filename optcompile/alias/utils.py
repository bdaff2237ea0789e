"""The pieces every alias shares, at TorchOpt's path ``alias.utils``.

``flip_sign_and_add_weight_decay`` (before the preconditioner) and ``scale_by_neg_lr`` (last)
are rules, so they fuse with the preconditioner between them. The *chain-flat switch*
(``_set_use_chain_flat``, a testing hook in TorchOpt) decides the layout of an alias's state:

- on (the default): the state's buffers are lists with one entry per parameter leaf, e.g.
  ``ScaleByAdamState(mu=[t1, t2], ...)``, TorchOpt's ``chain_flat`` layout;
- off: each buffer has the structure of the params, e.g. ``mu=(t1, t2)`` for a tuple of params.

The numbers are the same either way; only where the tensors sit in the state differs. The
implementations live in :mod:`optcompile.assemble`, which the optimizer declarations use.
"""

from __future__ import annotations

from typing import Any

from optcompile.assemble import (
    _get_use_chain_flat as _get_use_chain_flat,
)
from optcompile.assemble import (
    _set_use_chain_flat as _set_use_chain_flat,
)
from optcompile.assemble import flip_and_decay as _flip_and_decay
from optcompile.assemble import neg_lr as _neg_lr
from optcompile.assemble import params_shaped as params_shaped
from optcompile.base import GradientTransformation, identity

__all__ = ["flip_sign_and_add_weight_decay", "scale_by_neg_lr"]


def flip_sign_and_add_weight_decay(
    weight_decay: float = 0.0, maximize: bool = False
) -> GradientTransformation:
    r"""L2 weight decay and gradient ascent: :math:`u = s g + \lambda p`, :math:`s = -1` if
    ``maximize`` else 1; the identity when ``weight_decay == 0`` and not ``maximize``.

    Raises:
        HyperparameterError: ``weight_decay`` is negative.
    """
    tx = _flip_and_decay(weight_decay, maximize, None)
    return identity() if tx is None else tx


def scale_by_neg_lr(lr: Any) -> GradientTransformation:
    r"""The last member of every alias: :math:`u = -\eta g` (``lr`` a number, tensor or schedule).

    Raises:
        HyperparameterError: ``lr`` is negative.
    """
    return _neg_lr(lr, None)


# TorchOpt's variants for already-flattened updates: ours take any pytree, a list included.
flip_sign_and_add_weight_decay.flat = flip_sign_and_add_weight_decay  # type: ignore[attr-defined]
scale_by_neg_lr.flat = scale_by_neg_lr  # type: ignore[attr-defined]
