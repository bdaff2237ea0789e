"""Distributed meta-training (``torchopt.distributed``'s names, and a faster data-parallel path).

Two ways to scale a meta-learning run out:

* **Data parallel, on collectives** (use this for speed): every rank runs the inner loops of its
  share of the tasks (:func:`shard_tasks`) and backpropagates its outer loss;
  :func:`sync_meta_gradients` all-reduces the meta-gradients during that backward, in buckets
  that overlap the rest of it, so ``backward()`` returns with the gradient of the mean loss over
  all tasks on every rank. Runs on gloo (CPU) and NCCL (GPU), launched by ``torchrun``.
* **TorchOpt's RPC API** (:func:`parallelize`, :func:`remote_async_call`, the partitioners and
  reducers, :mod:`optcompile.distributed.autograd`), on ``torch.distributed.rpc``, so that
  TorchOpt's distributed scripts run with ``import optcompile as torchopt``. RPC pickles
  arguments and results on every call and is no longer actively developed upstream.
"""

import torch.distributed as dist  # TorchOpt's scripts reach them as torchopt.distributed.dist/.rpc
import torch.distributed.rpc as rpc

from optcompile.distributed import api, autograd, world
from optcompile.distributed.api import (
    TensorDimensionPartitioner,
    batch_partitioner,
    dim_partitioner,
    exclusive_batch_partitioner,
    mean_reducer,
    parallelize,
    parallelize_async,
    parallelize_sync,
    remote_async_call,
    remote_sync_call,
    sum_reducer,
)
from optcompile.distributed.ddp_guard import check_not_ddp_wrapped
from optcompile.distributed.faults import fail_together, peer_failures
from optcompile.distributed.shard import TaskShard, shard_tasks
from optcompile.distributed.sync import MetaGradientSync, sync_meta_gradients
from optcompile.distributed.tree import tree_as_rref, tree_to_here, tree_wait
from optcompile.distributed.world import (
    WorldInfo,
    auto_init_rpc,
    barrier,
    get_local_rank,
    get_local_world_size,
    get_rank,
    get_worker_id,
    get_world_info,
    get_world_rank,
    get_world_size,
    not_on_rank,
    on_rank,
    rank_non_zero_only,
    rank_zero_only,
)


def is_available() -> bool:
    """Whether ``torch.distributed``, its RPC framework and distributed autograd are built in."""
    return dist.is_available() and rpc.is_available() and autograd.is_available()


__all__ = [
    "is_available",
    # data-parallel meta-training
    "sync_meta_gradients", "MetaGradientSync", "shard_tasks", "TaskShard",
    "check_not_ddp_wrapped", "fail_together", "peer_failures",
    # TorchOpt's RPC API
    "TensorDimensionPartitioner", "dim_partitioner", "batch_partitioner",
    "exclusive_batch_partitioner", "mean_reducer", "sum_reducer", "remote_async_call",
    "remote_sync_call", "parallelize", "parallelize_async", "parallelize_sync",
    # world
    "WorldInfo", "get_world_info", "get_world_rank", "get_rank", "get_world_size",
    "get_local_rank", "get_local_world_size", "get_worker_id", "barrier", "auto_init_rpc",
    "on_rank", "not_on_rank", "rank_zero_only", "rank_non_zero_only",
    # pytrees of futures and remote references
    "tree_wait", "tree_as_rref", "tree_to_here",
    # submodules
    "api", "autograd", "world",
]  # fmt: skip
