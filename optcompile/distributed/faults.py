"""One rank's exception, told to the others: every rank fails with the cause, none hangs.

A rank that raises inside its inner loop never reaches the outer backward, so the others block
in their all-reduce until the connection to it drops or the process group's timeout expires.
Inside :func:`fail_together`, the failing rank first writes its exception into the process
group's key-value store; the others' failed all-reduce (in ``sync_meta_gradients``) reads it
back and raises with the original error in its message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

__all__ = ["fail_together", "peer_failures"]

_KEY = "optcompile/distributed/failure/{rank}"


def _store() -> dist.Store | None:
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError):  # pragma: no cover - groups made without a store
        return None


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
    """Run a block; if it raises, publish the exception to the other ranks, then re-raise.

    Example::

        with od.fail_together():
            losses = [task_loss(net, inner, t) for t in tasks]   # may raise on one rank
            shard.mean_loss(losses).backward()   # the others fail here, naming the cause
    """
    try:
        yield
    except BaseException as error:
        store = _store()
        if store is not None:
            with contextlib.suppress(Exception):  # the original error matters more
                store.set(_KEY.format(rank=dist.get_rank()), f"{type(error).__name__}: {error}")
        raise


def peer_failures() -> dict[int, str]:
    """The exceptions other ranks published with :func:`fail_together` (rank -> message)."""
    store = _store()
    if store is None:
        return {}
    found = {}
    for rank in range(dist.get_world_size()):
        key = _KEY.format(rank=rank)
        with contextlib.suppress(Exception):  # the store may have gone with its host rank
            if rank != dist.get_rank() and store.check([key]):
                found[rank] = store.get(key).decode()
    return found
