"""Who am I in the world: ranks, world sizes, rank-gated decorators, RPC start-up and barrier.

TorchOpt's names (``torchopt.distributed.world``). The rank and world size come, in this order,
from an initialised ``torch.distributed`` process group, from an initialised RPC agent, and from
the environment variables that ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``); a process started without any of them is rank 0 of a world of 1. They are
read on every call rather than cached at import, so a process that sets the variables or joins a
group after importing optcompile sees the right values.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import torch.distributed as dist
import torch.distributed.rpc as rpc

__all__ = [
    "WorldInfo",
    "get_world_info",
    "get_world_rank",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "get_local_world_size",
    "get_worker_id",
    "barrier",
    "auto_init_rpc",
    "on_rank",
    "not_on_rank",
    "rank_zero_only",
    "rank_non_zero_only",
]

F = TypeVar("F", bound=Callable[..., Any])


def default_worker_name_format(
    world_rank: int, world_size: int, local_rank: int, local_world_size: int
) -> str:
    """``worker0``, ``worker1``, ... zero-padded to the width of the world size."""
    del local_rank, local_world_size
    return f"worker{world_rank:0{len(str(world_size))}d}"


_worker_name_format: Callable[..., str] = default_worker_name_format


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _rpc_initialized() -> bool:
    if not rpc.is_available():
        return False
    try:
        rpc.get_worker_info()
    except RuntimeError:
        return False
    return True


class WorldInfo(NamedTuple):
    """Where this process stands: global rank and size, rank and size on this node."""

    world_rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def rank(self) -> int:
        """The global rank (``world_rank``)."""
        return self.world_rank

    @property
    def worker_name(self) -> str:
        """This process's RPC worker name under the current name format."""
        return _worker_name_format(
            world_rank=self.world_rank,
            world_size=self.world_size,
            local_rank=self.local_rank,
            local_world_size=self.local_world_size,
        )


def get_world_info() -> WorldInfo:
    """The rank and size of this process, globally and on its node.

    Returns:
        A :class:`WorldInfo` from the process group if one is initialised, else from the RPC agent,
        else from ``torchrun``'s environment variables (rank 0 of 1 without them).
    """
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
    elif _rpc_initialized():
        rank = rpc.get_worker_info().id
        size = len(rpc.api._get_current_rpc_agent().get_worker_infos())
    else:
        rank, size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    local_rank = _env_int("LOCAL_RANK", rank % local_size if local_size > 0 else 0)
    return WorldInfo(rank, size, local_rank, local_size)


def get_world_rank() -> int:
    """The global rank of this process."""
    return get_world_info().world_rank


get_rank = get_world_rank


def get_world_size() -> int:
    """The number of processes in the world."""
    return get_world_info().world_size


def get_local_rank() -> int:
    """The rank of this process on its node."""
    return get_world_info().local_rank


def get_local_world_size() -> int:
    """The number of processes on this node."""
    return get_world_info().local_world_size


def get_worker_id(id: str | int | None = None) -> int:  # noqa: A002 - TorchOpt's name
    """The RPC worker id of ``id`` (a rank is returned as is; a name is looked up; None: self)."""
    if isinstance(id, int):
        return id
    return rpc.get_worker_info(worker_name=id).id


def barrier(worker_names: Iterable[str] | None = None) -> None:
    """Block until every process (or every worker in ``worker_names``) reaches this call.

    Uses the process group's barrier when one is initialised and no names are given, else the
    RPC agent's barrier over ``worker_names`` (all workers when None).

    Raises:
        RuntimeError: neither a process group nor RPC is initialised.
    """
    if worker_names is None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        return
    if not _rpc_initialized():
        raise RuntimeError(
            "barrier() needs torch.distributed.init_process_group or RPC "
            "(optcompile.distributed.auto_init_rpc) to be initialised first"
        )
    names = set() if worker_names is None else set(worker_names)
    rpc.api._barrier(names)


def auto_init_rpc(
    worker_init_fn: Callable[[], None] | None = None,
    worker_name_format: Callable[..., str] = default_worker_name_format,
    *,
    backend: Any = None,
    rpc_backend_options: Any = None,
) -> Callable[[F], F]:
    """A decorator that starts RPC from ``torchrun``'s environment around the decorated function.

    The decorated function initialises RPC (worker name from ``worker_name_format``, rank and world
    size from ``RANK``/``WORLD_SIZE``, rendezvous at ``MASTER_ADDR:MASTER_PORT`` unless
    ``rpc_backend_options`` says otherwise), runs ``worker_init_fn`` on every worker, waits for
    all, calls the function, and shuts RPC down gracefully (waiting for every worker). When the
    function raised, the shutdown waits at most the RPC timeout, so that the other workers
    finish rather than hang, and the error is re-raised.

    Args:
        worker_init_fn: run on every worker after RPC is up, before the function.
        worker_name_format: ``(world_rank, world_size, local_rank, local_world_size) -> name``.
        backend: an ``rpc.BackendType`` (TensorPipe when None).
        rpc_backend_options: options for the backend (e.g. ``TensorPipeRpcBackendOptions``).
    """
    global _worker_name_format
    if not callable(worker_name_format):
        raise TypeError(f"worker_name_format must be callable, got {worker_name_format!r}")
    if worker_init_fn is not None and not callable(worker_init_fn):
        raise TypeError(f"worker_init_fn must be callable or None, got {worker_init_fn!r}")
    _worker_name_format = worker_name_format

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            info = get_world_info()
            rpc.init_rpc(
                name=info.worker_name,
                rank=info.rank,
                world_size=info.world_size,
                backend=backend,
                rpc_backend_options=rpc_backend_options,
            )
            try:
                if worker_init_fn is not None:
                    barrier()
                    worker_init_fn()
                barrier()
                result = func(*args, **kwargs)
            except BaseException:
                # Still take part in the shutdown handshake, bounded by the RPC timeout: the
                # other workers wait in it for every worker, and would wait forever otherwise.
                try:
                    rpc.shutdown(graceful=True, timeout=rpc.get_rpc_timeout())
                except Exception:  # noqa: BLE001 - the function's error is the one to report
                    rpc.shutdown(graceful=False)
                raise
            rpc.shutdown(graceful=True)
            return result

        return wrapped  # type: ignore[return-value]

    return decorator


def _gate(ranks: Iterable[int], *, inverse: bool) -> Callable[[F], F]:
    ranks = frozenset(ranks)
    for r in ranks:
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"ranks must be non-negative integers, got {r!r}")

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            # The rank is read at call time: the process may join a group after decorating.
            if (get_world_rank() in ranks) != inverse:
                return func(*args, **kwargs)
            return None

        return wrapped  # type: ignore[return-value]

    return decorator


def on_rank(*ranks: int) -> Callable[[F], F]:
    """A decorator: the function runs only on ``ranks`` (elsewhere it returns None)."""
    return _gate(ranks, inverse=False)


def not_on_rank(*ranks: int) -> Callable[[F], F]:
    """A decorator: the function runs on every rank except ``ranks`` (there it returns None)."""
    return _gate(ranks, inverse=True)


def rank_zero_only(func: F) -> F:
    """A decorator: the function runs only on rank 0."""
    return on_rank(0)(func)


def rank_non_zero_only(func: F) -> F:
    """A decorator: the function runs on every rank but 0."""
    return not_on_rank(0)(func)
