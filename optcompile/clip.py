"""``clip_grad_norm``: a global-norm clip that feeds one scalar into the fused rule after it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from optcompile.errors import HyperparameterError
from optcompile.fused import RuleTransformation, UpdatesStatistic, from_rule
from optcompile.rules.basic import scale

__all__ = ["clip_grad_norm"]


@dataclass(frozen=True)
class _ClipCoefficient:
    """``min(1, max_norm / (||updates||_p + 1e-6))``; a class, not a closure, so it pickles."""

    max_norm: float
    norm_type: float
    error_if_nonfinite: bool

    def __call__(self, updates: list[torch.Tensor]) -> torch.Tensor:
        if math.isinf(self.norm_type):
            norm = torch.stack([u.detach().abs().max() for u in updates]).max()
        else:
            norms = [torch.linalg.vector_norm(u.detach(), self.norm_type) for u in updates]
            norm = torch.linalg.vector_norm(torch.stack(norms), self.norm_type)
        if self.error_if_nonfinite and not torch.isfinite(norm):
            raise RuntimeError(
                f"clip_grad_norm: the total norm of order {self.norm_type} of the updates is "
                f"non-finite ({norm.item()}); pass error_if_nonfinite=False to clip anyway"
            )
        return torch.clamp(self.max_norm / (norm.double() + 1e-6), max=1.0)


def clip_grad_norm(
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    *,
    backend: str | None = None,
) -> RuleTransformation:
    r"""Scale all updates together so their global norm is at most ``max_norm``.

    .. math:: c = \min\left(1, \frac{G_{max}}{\lVert (g_1, \dots, g_n) \rVert_p + 10^{-6}}\right),
        \qquad u_i = c \, g_i

    as ``torch.nn.utils.clip_grad_norm_``. The norm is not elementwise, so it is computed first
    (without gradient: the coefficient is a constant to autograd, as in TorchOpt) and enters the
    next fused kernel as a scalar; the scaling itself fuses with the rules that follow (those
    on the same ``backend``, as for every rule transform).

    Raises:
        HyperparameterError: ``max_norm`` is negative or ``norm_type`` is not positive.
    """
    if not isinstance(max_norm, int | float) or isinstance(max_norm, bool) or max_norm < 0:
        raise HyperparameterError("max_norm", max_norm, "a number >= 0")
    if not isinstance(norm_type, int | float) or isinstance(norm_type, bool) or norm_type <= 0:
        raise HyperparameterError("norm_type", norm_type, "a number > 0 (or math.inf)")
    norm_type = float(norm_type)

    coefficient = _ClipCoefficient(float(max_norm), norm_type, bool(error_if_nonfinite))
    statistic = UpdatesStatistic(coefficient, f"min(1, {max_norm} / (||g||_{norm_type} + 1e-6))")
    return from_rule(scale, step_size=statistic, backend=backend)
