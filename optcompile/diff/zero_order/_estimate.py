r"""The zero-order estimator: seeded noise, drawn chunk by chunk, evaluated with ``vmap``.

For :math:`z \sim \mathcal{N}(0, I)` the Gaussian smoothing :math:`f_\sigma(x) = \mathbb{E}
[f(x + \sigma z)]` has the gradient (Stein's lemma)

.. math::

    \nabla f_\sigma(x) = \frac{1}{\sigma}\,\mathbb{E}[f(x + \sigma z)\, z]
                       = \frac{1}{\sigma}\,\mathbb{E}[(f(x + \sigma z) - f(x))\, z]
                       = \frac{1}{2\sigma}\,\mathbb{E}[(f(x + \sigma z) - f(x - \sigma z))\, z],

since :math:`\mathbb{E}[z] = 0` and :math:`z` and :math:`-z` have the same law. Each method
averages :math:`n` samples :math:`w_i z_i` of one of these expectations:

=============  =====================================================  =================
method         weight :math:`w_i`                                     evaluations of f
=============  =====================================================  =================
``naive``      :math:`f(x + \sigma z_i) / \sigma`                     n
``forward``    :math:`(f(x + \sigma z_i) - f(x)) / \sigma`            n (+ f(x), once)
``antithetic`` :math:`(f(x + \sigma z_i) - f(x - \sigma z_i))/(2\sigma)`  2n
=============  =====================================================  =================

All three are unbiased estimates of :math:`\nabla f_\sigma(x)`; on a quadratic,
:math:`\nabla f_\sigma = \nabla f`. ``forward`` and ``antithetic`` subtract a baseline, so their
variance does not grow with :math:`f(x)^2/\sigma^2` as ``naive``'s does.

Memory. The forward pass keeps the inputs, :math:`f(x)` and one integer seed. The backward
pass re-creates the noise from that seed, ``chunk_size`` samples at a time, evaluates the chunk
in one ``torch.func.vmap`` call and adds :math:`\sum_i w_i z_i` into one buffer per parameter:
memory is O(parameters x chunk_size), never O(parameters x num_samples).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import optree
import torch

Method = Literal["naive", "forward", "antithetic"]
METHODS: tuple[str, ...] = ("naive", "forward", "antithetic")
Sampler = Callable[[torch.Size], Any]

# Default chunk: as many samples as fit in 2**20 noise elements (4 MiB in float32).
_DEFAULT_CHUNK_ELEMENTS = 2**20


@dataclass
class Settings:
    """One decorated function's estimator (validated by :func:`zero_order`).

    ``vmap_failed`` is set the first time ``vmap`` cannot run the function; from then on its
    samples are evaluated in a Python loop, and the warning saying so is not repeated.
    """

    method: Method
    num_samples: int
    sigma: float
    chunk_size: int | None
    orthogonal: bool
    vectorize: bool
    vmap_failed: bool = False


@dataclass
class _Call:
    """What one call of a decorated function needs again in backward."""

    fn: Callable[..., torch.Tensor]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    argnums: tuple[int, ...]
    treespec: optree.PyTreeSpec
    sampler: Sampler
    settings: Settings
    seed: int

    def evaluate(self, leaves: Sequence[torch.Tensor]) -> torch.Tensor:
        """``fn`` with the differentiated arguments' leaves replaced by ``leaves``."""
        args = list(self.args)
        for argnum, tree in zip(
            self.argnums, optree.tree_unflatten(self.treespec, list(leaves)), strict=True
        ):
            args[argnum] = tree
        return self.fn(*args, **self.kwargs)


def _check_output(output: Any, name: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"{name} must return a scalar tensor for zero_order; got {type(output)}")
    if output.ndim != 0:
        raise ValueError(
            f"{name} must return a scalar tensor for zero_order; got shape {tuple(output.shape)}"
            " (reduce it, e.g. with .mean())"
        )
    return output


class _ZeroOrder(torch.autograd.Function):
    """``f(x)`` forward; the zero-order estimate of the gradient backward."""

    @staticmethod
    def forward(call: _Call, *leaves: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        output = _check_output(call.evaluate(leaves), getattr(call.fn, "__name__", "fn"))
        return output.detach().clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        call, *leaves = inputs
        ctx.call = call
        ctx.save_for_backward(output, *leaves)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        output, *leaves = ctx.saved_tensors
        estimate = estimate_gradient(ctx.call, leaves, output)
        grads = [
            grad_output * g if needed else None
            for g, needed in zip(estimate, ctx.needs_input_grad[1:], strict=True)
        ]
        return (None, *grads)


def apply(
    fn: Callable[..., torch.Tensor],
    sampler: Sampler,
    settings: Settings,
    argnums: tuple[int, ...],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """Call ``fn(*args, **kwargs)``; its backward gives ``args[argnums]`` zero-order gradients."""
    name = getattr(fn, "__name__", "fn")
    positions = []
    for argnum in argnums:
        if not -len(args) <= argnum < len(args):
            raise ValueError(
                f"argnums={argnums} refers to argument {argnum}, but {name} was called with"
                f" {len(args)} positional arguments"
            )
        positions.append(argnum % len(args))
    if len(set(positions)) != len(positions):
        raise ValueError(f"argnums={argnums} names the same argument twice")
    leaves, treespec = optree.tree_flatten([args[i] for i in positions])
    for leaf in leaves:
        if not (isinstance(leaf, torch.Tensor) and leaf.is_floating_point()):
            raise TypeError(
                f"the arguments argnums={argnums} of {name} must hold floating-point tensors"
                f" only; found {type(leaf).__name__}"
                + (f" of dtype {leaf.dtype}" if isinstance(leaf, torch.Tensor) else "")
            )
    # One draw from the global generator: torch.manual_seed makes the estimate reproducible,
    # and backward regenerates the noise from this seed instead of storing it.
    seed = int(torch.empty((), dtype=torch.int64).random_())
    call = _Call(fn, args, kwargs, tuple(positions), treespec, sampler, settings, seed)
    return _ZeroOrder.apply(call, *leaves)


def estimate_gradient(
    call: _Call, leaves: Sequence[torch.Tensor], output: torch.Tensor
) -> list[torch.Tensor]:
    r"""The zero-order gradient :math:`\frac{1}{n}\sum_i w_i z_i` for each leaf (see module doc).

    Noise comes from ``call.sampler`` under the global generator reseeded with ``call.seed``
    (the caller's generator state is left untouched), so the same call always gives the same
    estimate.
    """
    settings = call.settings
    n, sigma = settings.num_samples, settings.sigma
    leaves = [leaf.detach() for leaf in leaves]
    sums = [torch.zeros_like(leaf) for leaf in leaves]
    chunk = settings.chunk_size or _default_chunk(leaves, n)
    baseline = output.detach()
    with torch.no_grad(), _seeded(call.seed):
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            noise = _draw(call.sampler, leaves, size)
            if settings.orthogonal:
                noise = _orthogonalize(noise)
            plus = [torch.add(x, z, alpha=sigma) for x, z in zip(leaves, noise, strict=True)]
            if settings.method == "antithetic":
                minus = [torch.add(x, z, alpha=-sigma) for x, z in zip(leaves, noise, strict=True)]
                values = _evaluate(call, [torch.cat(pm) for pm in zip(plus, minus, strict=True)])
                weights = (values[:size] - values[size:]) / (2 * sigma)
            elif settings.method == "forward":
                weights = (_evaluate(call, plus) - baseline) / sigma
            else:
                weights = _evaluate(call, plus) / sigma
            for acc, z in zip(sums, noise, strict=True):
                acc.add_(torch.tensordot(weights.to(z.dtype), z, dims=1))
            del noise, plus
    return [acc.div_(n) for acc in sums]


def _default_chunk(leaves: Sequence[torch.Tensor], n: int) -> int:
    numel = sum(leaf.numel() for leaf in leaves)
    return max(1, min(n, _DEFAULT_CHUNK_ELEMENTS // max(numel, 1)))


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run under ``torch.manual_seed(seed)``, restoring every generator afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _draw(sampler: Sampler, leaves: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """``size`` noise samples per leaf, shaped ``(size, *leaf.shape)``."""
    noise = []
    for leaf in leaves:
        shape = torch.Size((size, *leaf.shape))
        z = torch.as_tensor(sampler(shape))
        if z.shape != shape:
            raise ValueError(
                f"distribution.sample(sample_shape) must return a tensor of shape sample_shape;"
                f" got {tuple(z.shape)} for sample_shape={tuple(shape)} (use a scalar"
                " distribution such as torch.distributions.Normal(0.0, 1.0))"
            )
        noise.append(z.to(device=leaf.device, dtype=leaf.dtype))
    return noise


def _orthogonalize(noise: list[torch.Tensor]) -> list[torch.Tensor]:
    r"""Orthogonal directions with the drawn samples' norms, in blocks of at most D samples.

    The rows :math:`g_i` of one block (all leaves flattened into :math:`D` columns) become the
    Gram-Schmidt directions :math:`q_i` (QR with a positive diagonal) scaled by
    :math:`\lVert g_i \rVert`. For a spherically symmetric distribution each
    :math:`q_i` is uniform on the sphere and independent of :math:`\lVert g_i \rVert`, so each
    sample keeps its law (the estimate stays unbiased) while a block's directions are
    orthogonal (Choromanski et al., 2018), which lowers the variance.
    """
    size = noise[0].shape[0]
    dtype = noise[0].dtype
    for z in noise[1:]:
        dtype = torch.promote_types(dtype, z.dtype)
    flat = torch.cat([z.reshape(size, -1).to(dtype) for z in noise], dim=1)
    dim = flat.shape[1]
    out = torch.empty_like(flat)
    for start in range(0, size, dim):
        block = flat[start : start + dim]
        q, r = torch.linalg.qr(block.T)
        signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(dtype)
        out[start : start + dim] = (q * signs).T * torch.linalg.vector_norm(block, dim=1)[:, None]
    pieces = out.split([z[0].numel() for z in noise], dim=1)
    return [p.reshape(z.shape).to(z.dtype) for p, z in zip(pieces, noise, strict=True)]


def _evaluate(call: _Call, points: list[torch.Tensor]) -> torch.Tensor:
    """``f`` at each row of ``points`` (one batch per leaf): vmap, or a loop where vmap fails.

    When vmap raises, the loop runs instead; only if the loop succeeds is the failure blamed on
    vmap (a warning, once per decorated function). Errors of the function itself surface from
    the loop, unchanged.
    """
    settings = call.settings
    name = getattr(call.fn, "__name__", "fn")
    if not settings.vectorize or settings.vmap_failed:
        return _loop(call, points, name)
    try:
        return torch.func.vmap(
            lambda *leaves: _check_output(call.evaluate(leaves), name), randomness="different"
        )(*points)
    except Exception as error:  # e.g. .item() or data-dependent control flow inside fn
        values = _loop(call, points, name)
        settings.vmap_failed = True
        reason = str(error).splitlines()[0] if str(error) else ""
        warnings.warn(
            f"zero_order: torch.func.vmap cannot evaluate {name} ({type(error).__name__}:"
            f" {reason}); its samples are evaluated one by one in a Python loop from now on"
            " (pass vectorize=False to choose the loop and silence this warning).",
            RuntimeWarning,
            stacklevel=2,
        )
        return values


def _loop(call: _Call, points: list[torch.Tensor], name: str) -> torch.Tensor:
    size = points[0].shape[0]
    return torch.stack(
        [_check_output(call.evaluate([p[i] for p in points]), name) for i in range(size)]
    )
