"""TorchOpt's RPC parallel-call API: partition a call's arguments, run the parts on workers, reduce.

``@parallelize(dim_partitioner(0), mean_reducer)`` turns ``f(batch)`` into: split every tensor
argument along dimension 0 into one part per worker, ``rpc_async(worker, f, part)`` for each
part, wait, and reduce the per-part results. Non-tensor arguments are sent whole to every part.
With the mean reducer the parts must be of equal size, because the mean of per-part means is
the mean over the batch only then:

    mean_i f(x_i) over n parts of size b  ==  (1/n) sum_parts (1/b) sum_{i in part} f(x_i)

so a batch that the workers do not divide evenly is an error rather than a silently re-weighted
result. This runs on ``torch.distributed.rpc``; for data-parallel meta-training at speed use
:func:`optcompile.distributed.sync_meta_gradients` instead (collectives, no pickled models).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import optree
import torch
import torch.distributed.rpc as rpc

from optcompile.distributed.world import get_worker_id, get_world_rank, get_world_size

__all__ = [
    "TensorDimensionPartitioner",
    "dim_partitioner",
    "batch_partitioner",
    "mean_reducer",
    "sum_reducer",
    "remote_async_call",
    "remote_sync_call",
    "parallelize",
    "parallelize_async",
    "parallelize_sync",
]

UNSET_RPC_TIMEOUT: float = rpc.api.UNSET_RPC_TIMEOUT if rpc.is_available() else -1.0

T = TypeVar("T")
U = TypeVar("U")
Args = tuple[Any, ...]
KwArgs = dict[str, Any]
Partition = tuple[int, Args, KwArgs]
PartitionFunction = Callable[..., Sequence[Partition]]
Partitioner = int | str | PartitionFunction


class TensorDimensionPartitioner:
    """Split every tensor of a call's arguments along ``dim``, one part per worker (or sample).

    Args:
        dim: the dimension to split (negative counts from the end).
        exclusive: one part per sample along ``dim`` (parts go round-robin over the workers);
            otherwise ``min(batch, workers)`` equal parts, one per worker.
        keepdim: keep ``dim`` in each part (a slice of length 1 when exclusive) instead of
            selecting it away; ``keepdim=False`` needs ``exclusive=True``.
        workers: worker ranks or names to use (all workers when None).

    Raises:
        ValueError: ``keepdim=False`` without ``exclusive``; when called, tensors that disagree on
            the size of ``dim``, or a batch larger than the worker count that it does not
            divide (the parts would have unequal sizes).
    """

    def __init__(
        self,
        dim: int,
        *,
        exclusive: bool = False,
        keepdim: bool = False,
        workers: Sequence[int | str] | None = None,
    ) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool):
            raise TypeError(f"dim must be an int, got {dim!r}")
        if not keepdim and not exclusive:
            raise ValueError("keepdim=False needs exclusive=True (one sample per part)")
        self.dim = dim
        self.exclusive = exclusive
        self.keepdim = keepdim
        self.workers = None if workers is None else tuple(workers)
        if self.workers is not None and not self.workers:
            raise ValueError("workers must name at least one worker, got an empty sequence")

    def __call__(self, *args: Any, **kwargs: Any) -> list[Partition]:
        """The ``(worker_id, args, kwargs)`` of every part."""
        workers = (
            list(range(get_world_size()))
            if self.workers is None
            else [get_worker_id(w) for w in self.workers]
        )
        leaves, spec = optree.tree_flatten((args, kwargs))
        batch = None
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                size = leaf.shape[self.dim]
                if batch is None:
                    batch = size
                elif size != batch:
                    raise ValueError(
                        f"tensor arguments disagree on the size of dim={self.dim}: {batch} and "
                        f"{size} (shape {tuple(leaf.shape)})"
                    )
        if batch is None:  # nothing to split: one call, here
            return [(get_world_rank(), args, dict(kwargs))]

        if self.exclusive or batch <= len(workers):
            bounds = [(i, 1) for i in range(batch)]
        else:
            if batch % len(workers) != 0:
                raise ValueError(
                    f"a batch of {batch} along dim={self.dim} does not split evenly over "
                    f"{len(workers)} workers; use a multiple of {len(workers)}, or "
                    f"exclusive=True for one call per sample"
                )
            size = batch // len(workers)
            bounds = [(w * size, size) for w in range(len(workers))]

        def take(leaf: Any, start: int, length: int) -> Any:
            if not isinstance(leaf, torch.Tensor):
                return leaf
            if self.keepdim:
                return leaf.narrow(self.dim, start, length)
            return leaf.select(self.dim, start)

        parts = []
        for i, (start, length) in enumerate(bounds):
            part_args, part_kwargs = optree.tree_unflatten(
                spec, [take(leaf, start, length) for leaf in leaves]
            )
            parts.append((workers[i % len(workers)], tuple(part_args), dict(part_kwargs)))
        return parts

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            functools.partial(
                TensorDimensionPartitioner,
                exclusive=self.exclusive,
                keepdim=self.keepdim,
                workers=self.workers,
            ),
            (self.dim,),
        )

    def __repr__(self) -> str:
        return (
            f"TensorDimensionPartitioner(dim={self.dim}, exclusive={self.exclusive}, "
            f"keepdim={self.keepdim}, workers={self.workers})"
        )


def dim_partitioner(
    dim: int = 0,
    *,
    exclusive: bool = False,
    keepdim: bool = True,
    workers: Sequence[int | str] | None = None,
) -> PartitionFunction:
    """A :class:`TensorDimensionPartitioner` along ``dim`` (``keepdim`` on by default)."""
    return TensorDimensionPartitioner(dim, exclusive=exclusive, keepdim=keepdim, workers=workers)


batch_partitioner: PartitionFunction = dim_partitioner(dim=0, keepdim=True, exclusive=False)
"""Split dimension 0 into one equal part per worker."""

exclusive_batch_partitioner: PartitionFunction = dim_partitioner(
    dim=0, keepdim=True, exclusive=True
)
"""One call per sample along dimension 0, round-robin over the workers."""


def mean_reducer(results: Iterable[torch.Tensor]) -> torch.Tensor:
    """The elementwise mean of the per-part results."""
    return torch.mean(torch.stack(tuple(results), dim=0), dim=0)


def sum_reducer(results: Iterable[torch.Tensor]) -> torch.Tensor:
    """The elementwise sum of the per-part results."""
    return torch.sum(torch.stack(tuple(results), dim=0), dim=0)


_NAMED_REDUCERS: dict[str, Callable[[Iterable[torch.Tensor]], torch.Tensor]] = {
    "mean": mean_reducer,
    "sum": sum_reducer,
}


def _check_reducer(reducer: Any) -> Callable[[Iterable[Any]], Any] | None:
    if reducer is None or (callable(reducer) and not isinstance(reducer, str)):
        return reducer
    if isinstance(reducer, str):
        if reducer not in _NAMED_REDUCERS:
            raise ValueError(
                f"unknown reducer {reducer!r}; use 'mean', 'sum', a callable taking the list of "
                f"per-part results, or None"
            )
        return _NAMED_REDUCERS[reducer]
    raise TypeError(f"reducer must be a callable, 'mean', 'sum' or None, got {reducer!r}")


def _partition(partitioner: Any, args: Args, kwargs: KwArgs) -> Sequence[Partition]:
    if partitioner is None:
        partitioner = batch_partitioner
    if isinstance(partitioner, int | str) and not isinstance(partitioner, bool):
        return [(get_worker_id(partitioner), args, kwargs)]
    if callable(partitioner):
        return partitioner(*args, **kwargs)
    raise TypeError(
        f"partitioner must be a worker rank, a worker name or a callable, got {partitioner!r}"
    )


def remote_async_call(
    func: Callable[..., T],
    *,
    args: Args | None = None,
    kwargs: KwArgs | None = None,
    partitioner: Partitioner | None = None,
    reducer: Callable[[Iterable[T]], U] | None = None,
    timeout: float | None = UNSET_RPC_TIMEOUT,
) -> torch.futures.Future:
    """Run ``func`` on the parts of its arguments on remote workers; a future of the result.

    Args:
        func: a function importable by its qualified name on every worker.
        args, kwargs: the arguments, split by ``partitioner``.
        partitioner: a worker rank or name (one call there, arguments whole), or a function
            returning ``(worker, args, kwargs)`` parts (default :data:`batch_partitioner`).
        reducer: combines the list of per-part results (``'mean'``/``'sum'`` name the built-in
            reducers); None returns the list.
        timeout: seconds per RPC (the agent's default when unset).

    Returns:
        A ``torch.futures.Future`` of the reduced result, or of the list of results.

    Raises:
        TypeError, ValueError: an unusable partitioner or reducer (before anything is sent).
    """
    reduce = _check_reducer(reducer)
    parts = _partition(partitioner, tuple(args or ()), dict(kwargs or {}))
    futures = [
        rpc.rpc_async(worker, func, args=part_args, kwargs=part_kwargs, timeout=timeout)
        for worker, part_args, part_kwargs in parts
    ]
    gathered = torch.futures.collect_all(futures).then(lambda done: [f.wait() for f in done.wait()])
    if reduce is None:
        return gathered
    return gathered.then(lambda done: reduce(done.wait()))


def remote_sync_call(
    func: Callable[..., T],
    *,
    args: Args | None = None,
    kwargs: KwArgs | None = None,
    partitioner: Partitioner | None = None,
    reducer: Callable[[Iterable[T]], U] | None = None,
    timeout: float | None = UNSET_RPC_TIMEOUT,
) -> list[T] | U:
    """:func:`remote_async_call`, waited for: the reduced result (or the list of results)."""
    return remote_async_call(
        func, args=args, kwargs=kwargs, partitioner=partitioner, reducer=reducer, timeout=timeout
    ).wait()


def _publish_unwrapped(func: Callable[..., Any], suffix: str) -> None:
    """Make ``func`` picklable after its name is taken by the wrapper.

    RPC pickles a function by module and qualified name; once decorated, that name holds the
    wrapper, so the original is renamed with ``suffix`` and stored under the new name in its
    module, where every worker (which imports the same module) finds it.
    """
    name = getattr(func, "__qualname__", func.__name__)
    module = sys.modules.get(func.__module__)
    if module is None or "<locals>" in name:
        return  # not picklable by name anyway; rpc reports it when called
    func.__name__ = f"{func.__name__}{suffix}"
    func.__qualname__ = f"{name}{suffix}"
    if "." not in name:
        setattr(module, func.__qualname__, func)


def _parallelize(
    partitioner: Partitioner | None,
    reducer: Any,
    timeout: float | None,
    *,
    wait: bool,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if partitioner is None:
        partitioner = batch_partitioner
        if reducer is None:
            reducer = mean_reducer
    _check_reducer(reducer)
    if not (partitioner is None or callable(partitioner) or isinstance(partitioner, int | str)):
        raise TypeError(
            f"partitioner must be a worker rank, a worker name or a callable, got {partitioner!r}"
        )

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            call = remote_sync_call if wait else remote_async_call
            return call(
                func,
                args=args,
                kwargs=kwargs,
                partitioner=partitioner,
                reducer=reducer,
                timeout=timeout,
            )

        _publish_unwrapped(func, "__parallelize_unwrapped__")
        return wrapped

    return decorator


def parallelize_async(
    partitioner: Partitioner | None = None,
    reducer: Callable[[Iterable[T]], U] | None = None,
    timeout: float | None = UNSET_RPC_TIMEOUT,
) -> Callable[[Callable[..., T]], Callable[..., torch.futures.Future]]:
    """A decorator: calling the function runs :func:`remote_async_call` and returns its future.

    Without a partitioner, the batch partitioner and the mean reducer are used.
    """
    return _parallelize(partitioner, reducer, timeout, wait=False)


def parallelize(
    partitioner: Partitioner | None = None,
    reducer: Callable[[Iterable[T]], U] | None = None,
    timeout: float | None = UNSET_RPC_TIMEOUT,
) -> Callable[[Callable[..., T]], Callable[..., list[T] | U]]:
    """A decorator: calling the function runs :func:`remote_sync_call` and returns the result.

    Without a partitioner, the batch partitioner and the mean reducer are used.

    Example::

        @parallelize(dim_partitioner(0), mean_reducer)
        def loss(x):          # runs on every worker with its slice of x
            return (x ** 2).mean()

        loss(torch.arange(8.0))  # == (torch.arange(8.0) ** 2).mean() on 2 workers
    """
    return _parallelize(partitioner, reducer, timeout, wait=True)


parallelize_sync = parallelize
