"""``ZeroOrderGradientModule``: a module whose parameters get zero-order gradients.

A subclass implements ``forward`` (returning a scalar loss) and ``sample(sample_shape)`` (the
noise) and names its estimator in the class statement::

    class Net(ZeroOrderGradientModule, method="antithetic", num_samples=64, sigma=0.1):
        ...

Calling the module returns ``forward``'s loss; its backward fills every parameter that requires
grad with the estimate of :func:`~optcompile.diff.zero_order.zero_order` (the parameters are
perturbed together, through ``torch.func.functional_call``, so ``vmap`` evaluates all samples
of a chunk at once).
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from optcompile.diff.zero_order._estimate import Method, Settings, apply
from optcompile.diff.zero_order.decorator import make_settings

__all__ = ["ZeroOrderGradientModule"]

_ORIGINAL = "__zero_order_original_forward__"
_INSIDE = "_zero_order_inside"


class ZeroOrderGradientModule(nn.Module, metaclass=abc.ABCMeta):
    """Base class of modules trained with zero-order gradients (TorchOpt's name and API).

    ``forward`` and ``sample`` are abstract: a subclass lacking either cannot be instantiated
    (``TypeError``), as in TorchOpt.

    Class keyword arguments (TorchOpt's, then optcompile's keyword-only extras): ``method``
    (``'naive'``), ``num_samples`` (1), ``sigma`` (1.0), ``chunk_size``, ``orthogonal``,
    ``vectorize``; see :func:`~optcompile.diff.zero_order.zero_order`. A subclass that does not
    define ``forward`` re-wraps its parent's with its own settings.
    """

    def __init_subclass__(
        cls,
        method: Method = "naive",
        num_samples: int = 1,
        sigma: float = 1.0,
        *,
        chunk_size: int | None = None,
        orthogonal: bool = False,
        vectorize: bool = True,
        **kwargs: Any,
    ) -> None:
        """Wrap the subclass's ``forward`` in a zero-order estimator (validated here)."""
        super().__init_subclass__(**kwargs)
        settings = make_settings(method, num_samples, sigma, chunk_size, orthogonal, vectorize)
        forward = cls.__dict__.get("forward") or getattr(cls.forward, _ORIGINAL, cls.forward)
        cls.forward = _wrap(forward, settings)  # type: ignore[method-assign]

    @abc.abstractmethod
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The scalar loss; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    @abc.abstractmethod
    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        """A tensor of ``sample_shape`` i.i.d. noise draws; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample(sample_shape)")


def _wrap(forward: Callable[..., torch.Tensor], settings: Settings) -> Callable[..., torch.Tensor]:
    @functools.wraps(forward)
    def wrapped(self: ZeroOrderGradientModule, *inputs: Any, **kwargs: Any) -> torch.Tensor:
        if self.__dict__.get(_INSIDE, False):  # called back by functional_call below
            return forward(self, *inputs, **kwargs)
        named = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        if not named:
            raise RuntimeError(
                f"The module has no parameters that require grad ({type(self).__name__}):"
                " zero-order gradients have nothing to estimate"
            )
        names = [name for name, _ in named]

        def objective(params: tuple[torch.Tensor, ...], *inputs: Any, **kwargs: Any) -> Any:
            with _inside(self):
                return torch.func.functional_call(
                    self, dict(zip(names, params, strict=True)), inputs, kwargs
                )

        objective.__name__ = f"{type(self).__name__}.forward"
        params = tuple(p for _, p in named)
        return apply(objective, self.sample, settings, (0,), (params, *inputs), kwargs)

    setattr(wrapped, _ORIGINAL, forward)
    return wrapped


@contextlib.contextmanager
def _inside(module: nn.Module) -> Iterator[None]:
    previous = module.__dict__.get(_INSIDE, False)
    module.__dict__[_INSIDE] = True
    try:
        yield
    finally:
        module.__dict__[_INSIDE] = previous
