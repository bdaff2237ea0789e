"""Stateless elementwise rules: scaling, sign flip, weight decay. The glue of every alias."""

from __future__ import annotations

from optcompile.rule import rule

__all__ = [
    "scale",
    "scale_by_neg_lr",
    "flip_sign_and_add_weight_decay",
    "add_decayed_weights",
]


# With a schedule the state is a step count: TorchOpt's ScaleByScheduleState(count=...).
@rule(state_name="ScaleByScheduleState")
def scale(g, *, step_size=1.0):
    r"""Scale the update by a constant: :math:`u = \alpha g`."""
    return step_size * g, ()


@rule(domains={"lr": ">= 0"}, state_name="ScaleByScheduleState")
def scale_by_neg_lr(g, *, lr=1e-3):
    r"""The last step of every alias: :math:`u = -\eta g` (a descent direction becomes a delta)."""
    return -lr * g, ()


@rule(domains={"weight_decay": ">= 0"})
def flip_sign_and_add_weight_decay(g, *, weight_decay=0.0, sign=1.0, params):
    r"""L2 weight decay and maximisation, before preconditioning: :math:`u = s g + \lambda p`.

    ``sign`` is -1 for ``maximize=True`` (gradient ascent), as in ``torch.optim``.
    """
    return sign * g + weight_decay * params, ()


@rule(domains={"weight_decay": ">= 0"})
def add_decayed_weights(g, *, weight_decay=0.0, params):
    r"""Decoupled weight decay (AdamW), after preconditioning: :math:`u = g + \lambda p`."""
    return g + weight_decay * params, ()
