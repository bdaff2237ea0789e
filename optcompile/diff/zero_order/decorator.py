r"""``zero_order``: TorchOpt's decorator for zero-order (evolution-strategies) gradients.

The decorated function runs as usual forward; its backward estimates

.. math::

    \nabla_x f_\sigma(x) = \nabla_x\, \mathbb{E}_{z \sim \mathcal{N}(0, I)}[f(x + \sigma z)]

from evaluations of ``f`` alone, so ``f`` may be non-differentiable (``round``, ``sort``,
a simulator). The three estimators and the memory scheme are described in
:mod:`optcompile.diff.zero_order._estimate`.

Unlike TorchOpt 0.7.3, ``method='forward'`` divides by :math:`\sigma` and uses :math:`f(x)` as
the baseline of every sample (TorchOpt multiplies by :math:`\sigma` and replaces the baseline
by the previous difference after the first sample, so its estimate is biased: about 1e-3 times
the true gradient at ``sigma=0.01``).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from optcompile.diff.zero_order._estimate import METHODS, Method, Sampler, Settings, apply
from optcompile.errors import HyperparameterError

__all__ = ["zero_order", "make_settings", "Samplable", "Method"]


@runtime_checkable
class Samplable(Protocol):
    """Anything with ``sample(sample_shape)``, e.g. ``torch.distributions.Normal(0.0, 1.0)``."""

    def sample(self, sample_shape: torch.Size = ...) -> Any:  # pragma: no cover - protocol
        """A tensor of shape ``sample_shape`` (a batch of i.i.d. draws)."""
        ...


def zero_order(
    distribution: Samplable | Callable[[torch.Size], Any],
    method: Method = "naive",
    argnums: int | tuple[int, ...] = (0,),
    num_samples: int = 1,
    sigma: float = 1.0,
    *,
    chunk_size: int | None = None,
    orthogonal: bool = False,
    vectorize: bool = True,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    r"""Return a decorator whose function gets zero-order gradients for ``args[argnums]``.

    The backward of the decorated ``f`` returns, for each tensor leaf of ``args[argnums]``,

    .. math::

        \hat g = \frac{1}{n} \sum_{i=1}^{n} w_i z_i, \qquad z_i \sim \text{distribution},

    with :math:`w_i = f(x + \sigma z_i)/\sigma` (``naive``),
    :math:`(f(x + \sigma z_i) - f(x))/\sigma` (``forward``) or
    :math:`(f(x + \sigma z_i) - f(x - \sigma z_i))/(2\sigma)` (``antithetic``). For standard
    normal noise each is an unbiased estimate of the gradient of the Gaussian smoothing
    :math:`\mathbb{E}[f(x + \sigma z)]` (equal to :math:`\nabla f` on a quadratic).

    Args:
        distribution: the noise: an object with ``sample(sample_shape)`` (a
            ``torch.distributions`` distribution with an empty batch shape, or a
            :class:`~optcompile.nn.ZeroOrderGradientModule`), or a function of the shape. It
            should be spherically symmetric with identity covariance (standard normal).
        method: ``'naive'``, ``'forward'`` or ``'antithetic'``.
        argnums: the positional argument(s) to differentiate; each may be a pytree of tensors.
        num_samples: :math:`n`, the number of noise samples (pairs, for ``antithetic``).
        sigma: :math:`\sigma > 0`, the smoothing radius.
        chunk_size: samples evaluated per ``vmap`` call; bounds memory at
            O(parameters x chunk_size). ``None``: as many as fit in 2**20 noise elements.
        orthogonal: make the directions of each chunk orthogonal (blocks of at most D, the
            number of parameters), keeping each sample's law; lowers the variance.
        vectorize: evaluate the samples with ``torch.func.vmap`` (``False``: a Python loop).
            Where vmap cannot run ``f`` (``.item()``, data-dependent control flow), the loop
            takes over after one ``RuntimeWarning``.

    Returns:
        A decorator. The decorated function returns ``f``'s scalar output; its backward draws
        fresh noise from a seed taken from torch's global generator at the call (so
        ``torch.manual_seed`` makes it reproducible) and never changes that generator's state.

    Raises:
        TypeError: ``distribution`` has no ``sample`` and is not callable; ``argnums`` is not
            an int or a tuple of ints.
        ValueError: an unknown ``method``; ``num_samples < 1``; ``sigma <= 0`` or not finite;
            ``chunk_size < 1`` (``HyperparameterError``, a ``ValueError``).

    Examples:
        >>> import torch, optcompile
        >>> @optcompile.diff.zero_order.zero_order(
        ...     torch.distributions.Normal(0.0, 1.0), method="antithetic", num_samples=64,
        ...     sigma=0.1)
        ... def f(x):
        ...     return (x**2).sum()
        >>> x = torch.tensor([1.0, -2.0], requires_grad=True)
        >>> f(x).backward()  # x.grad estimates 2 * x
    """
    sampler = _sampler(distribution)
    argnums = _argnums(argnums)
    settings = make_settings(method, num_samples, sigma, chunk_size, orthogonal, vectorize)

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> torch.Tensor:
            return apply(fn, sampler, settings, argnums, args, kwargs)

        return wrapped

    return decorator


def make_settings(
    method: object,
    num_samples: object,
    sigma: object,
    chunk_size: object,
    orthogonal: bool,
    vectorize: bool,
) -> Settings:
    """Validate the estimator's arguments (shared with ``ZeroOrderGradientModule``)."""
    if method not in METHODS:
        raise HyperparameterError("method", method, "one of 'naive', 'forward', 'antithetic'")
    if not _is_int(num_samples) or num_samples < 1:  # type: ignore[operator]
        raise HyperparameterError("num_samples", num_samples, "an integer >= 1")
    if not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma <= 0:
        raise HyperparameterError("sigma", sigma, "a finite real number > 0")
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):  # type: ignore[operator]
        raise HyperparameterError("chunk_size", chunk_size, "None or an integer >= 1")
    return Settings(
        method,  # type: ignore[arg-type]
        int(num_samples),  # type: ignore[call-overload]
        float(sigma),
        None if chunk_size is None else int(chunk_size),  # type: ignore[call-overload]
        bool(orthogonal),
        bool(vectorize),
    )


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _argnums(argnums: object) -> tuple[int, ...]:
    if _is_int(argnums):
        return (int(argnums),)  # type: ignore[call-overload]
    if isinstance(argnums, tuple) and argnums and all(_is_int(a) for a in argnums):
        if len(set(argnums)) != len(argnums):
            raise ValueError(f"argnums={argnums} names the same argument twice")
        return tuple(int(a) for a in argnums)
    raise TypeError(f"argnums must be an int or a non-empty tuple of ints; got {argnums!r}")


def _sampler(distribution: object) -> Sampler:
    """``distribution.sample`` where it exists, else ``distribution`` itself if callable."""
    sample = getattr(distribution, "sample", None)
    if callable(sample):
        return sample  # type: ignore[no-any-return]
    if callable(distribution):
        return distribution  # type: ignore[return-value]
    raise TypeError(
        "distribution must have a sample(sample_shape) method (e.g."
        " torch.distributions.Normal(0.0, 1.0)) or be a function of the sample shape; got"
        f" {type(distribution).__name__}"
    )
