"""``AdamOp``: TorchOpt's fused Adam call on single tensors, running optcompile's Adam rule.

TorchOpt's op is the C++/CUDA kernel behind ``scale_by_accelerated_adam``; here the same call
runs :data:`optcompile.rules.adam.scale_by_adam` (on the native backend where it is available),
so there is one Adam and one backward whichever way it is called.
"""

from __future__ import annotations

import torch

from optcompile.rules.adam import scale_by_adam

__all__ = ["AdamOp"]


class AdamOp:
    r"""One Adam step on one tensor: ``(mu, nu, updates, count) -> (mu', nu', updates')``.

    .. math:: \mu' = b_1 \mu + (1-b_1) g, \quad \nu' = b_2 \nu + (1-b_2) g^2, \quad
        u' = \frac{\mu' / (1 - b_1^t)}{\sqrt{\nu' / (1 - b_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        b1, b2, eps: Adam's hyper-parameters.
        eps_root: added inside the square root.
        inplace: write ``mu'``, ``nu'`` and ``u'`` into ``mu``, ``nu`` and ``updates``
            (not differentiable); False returns new tensors that carry the graph.
    """

    def __init__(
        self,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-8,
        *,
        eps_root: float = 0.0,
        inplace: bool = True,
    ) -> None:
        self.b1, self.b2, self.eps, self.eps_root = b1, b2, eps, eps_root
        self.inplace = bool(inplace)
        self._tx = scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def __call__(
        self,
        mu: torch.Tensor,
        nu: torch.Tensor,
        updates: torch.Tensor | None,
        count: int | torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Step ``count`` (1 for the first step, as TorchOpt counts) of Adam.

        Raises:
            ValueError: ``count`` is below 1.
        """
        if updates is None:
            return mu, nu, None
        step = int(count)
        if step < 1:
            raise ValueError(f"count={step} must be >= 1 (the number of the step being taken)")
        state_type = self._tx.members[0].state_type
        state = state_type(mu=[mu], nu=[nu], count=[torch.tensor(step - 1, dtype=torch.int64)])
        (new_updates,), new_state = self._tx.update([updates], state, inplace=self.inplace)
        new_mu, new_nu = new_state.mu[0], new_state.nu[0]
        if self.inplace:
            for target, value in ((mu, new_mu), (nu, new_nu), (updates, new_updates)):
                if target is not value:
                    target.copy_(value)
            return mu, nu, updates
        return new_mu, new_nu, new_updates
