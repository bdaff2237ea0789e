"""optax's elementwise and per-tensor transforms: ``ema``, ``clip``, ``centralize``, ``add_noise``.

``ema`` and ``clip`` are rules (they fuse with their neighbours in a chain); ``centralize``
(a mean over each tensor) and ``add_noise`` (random numbers) are plain torch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from optcompile.base import EmptyState, GradientTransformation
from optcompile.fused import RuleTransformation, from_rule
from optcompile.lowering.check import numbers_of, parse_domain
from optcompile.rules import ema as _ema

__all__ = ["ema", "clip", "centralize", "add_noise", "AddNoiseState"]


def ema(decay: float, debias: bool = True, *, backend: str | None = None) -> RuleTransformation:
    r"""Exponential moving average of the updates (optax's ``ema``).

    .. math:: e_t = \delta e_{t-1} + (1-\delta) g, \quad u = e_t / (1 - \delta^t)
        \text{ if debias else } e_t
    """
    rule = _ema.ema_debiased if debias else _ema.ema_biased
    return from_rule(rule, decay=decay, backend=backend)


def clip(max_delta: float, *, backend: str | None = None) -> RuleTransformation:
    r"""Clip each element of the updates to :math:`[-\delta, \delta]` (optax's ``clip``)."""
    return from_rule(_ema.clip_elementwise, max_delta=max_delta, backend=backend)


def centralize() -> GradientTransformation:
    r"""Gradient centralisation (Yong et al., 2020): subtract each tensor's mean over all but
    its first dimension (tensors of one dimension or fewer pass unchanged), as optax.

    .. math:: u_{i\ldots} = g_{i\ldots} - \operatorname{mean}_{\ldots} g_{i\ldots}
    """

    def init(params: Any) -> EmptyState:
        return EmptyState()

    def update(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        def center(g: torch.Tensor | None) -> torch.Tensor | None:
            if g is None or g.dim() <= 1:
                return g
            mean = g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
            return g.sub_(mean) if inplace and not g.requires_grad else g - mean

        return optree.tree_map(center, updates, none_is_leaf=True), state

    return GradientTransformation(init, update)


class AddNoiseState(NamedTuple):
    """The state of :func:`add_noise`: the step count and the seed of the noise."""

    count: torch.Tensor
    seed: int


def add_noise(eta: float, gamma: float, seed: int = 0) -> GradientTransformation:
    r"""Add annealed Gaussian noise (Neelakantan et al., 2015), as optax's ``add_noise``.

    .. math:: u = g + \sqrt{\eta / t^\gamma}\, \xi, \quad \xi \sim \mathcal N(0, 1), \quad
        t = 1, 2, \ldots

    The noise of step ``t`` is drawn from a generator seeded with ``(seed, t)``: a run is
    reproducible, and a checkpointed state resumes the same sequence. (The numbers differ from
    optax's, which come from jax's generator.)

    Raises:
        HyperparameterError: ``eta`` < 0.
        TypeError: ``seed`` is not an int.
    """
    parse_domain(">= 0").validate("eta", eta)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")
    if numbers_of(gamma) is None:
        raise TypeError(f"gamma={gamma!r} must be a real number")

    def init(params: Any) -> AddNoiseState:
        return AddNoiseState(torch.zeros((), dtype=torch.int64), seed)

    def update(
        updates: Any, state: AddNoiseState, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, AddNoiseState]:
        count = int(state.count) + 1
        std = (eta / count**gamma) ** 0.5
        generator = torch.Generator().manual_seed(state.seed * 1_000_003 + count)

        def noisy(g: torch.Tensor | None) -> torch.Tensor | None:
            if g is None:
                return g
            noise = torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
            return g.add_(noise, alpha=std) if inplace and not g.requires_grad else g + std * noise

        new_updates = optree.tree_map(noisy, updates, none_is_leaf=True)
        return new_updates, AddNoiseState(state.count + 1, state.seed)

    return GradientTransformation(init, update)
