"""Each rank's share of the tasks, and the loss scale that makes ranks' averages exact.

``N`` tasks over ``W`` ranks: rank ``r`` takes the contiguous block

    start_r = r * (N // W) + min(r, N % W),   size_r = N // W + [r < N % W]

so the first ``N % W`` ranks take one task more, every task is taken exactly once, and the split
depends only on ``(N, W, r)``. With unequal shares, the mean over ranks of the per-rank mean loss
is not the mean over all tasks; :meth:`TaskShard.mean_loss` scales the local sum instead,

    L_r = (W / N) * sum_{t in shard r} l_t,   so   (1/W) sum_r L_r = (1/N) sum_t l_t,

which is what ``sync_meta_gradients(op="mean")`` (and DDP) average, for any remainder.
:meth:`TaskShard.mean_gradient` applies the same scale to per-task meta-gradients computed as
values (the functional forms), for ``MetaGradientSync.backward``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import optree
import torch

from optcompile.distributed.world import get_world_rank, get_world_size

__all__ = ["TaskShard", "shard_tasks"]

T = TypeVar("T")


@dataclass(frozen=True)
class TaskShard:
    """The tasks of one rank.

    Attributes:
        indices: the global indices of this rank's tasks (a contiguous range).
        num_tasks: the number of tasks over all ranks.
        rank: this rank.
        world_size: the number of ranks.
    """

    indices: range
    num_tasks: int
    rank: int
    world_size: int

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def select(self, tasks: Sequence[T]) -> list[T]:
        """This rank's items of ``tasks`` (a sequence of ``num_tasks`` items)."""
        if len(tasks) != self.num_tasks:
            raise ValueError(
                f"tasks has {len(tasks)} items but the shard was made for {self.num_tasks}"
            )
        return [tasks[i] for i in self.indices]

    def mean_loss(self, losses: Iterable[torch.Tensor]) -> torch.Tensor:
        """``(world_size / num_tasks) * sum(losses)``: the loss to backpropagate on this rank.

        Averaged over ranks (``sync_meta_gradients(op="mean")``, or DDP), its gradient is the
        gradient of the mean loss over all tasks, even when shares are unequal.

        Raises:
            ValueError: ``losses`` does not hold one loss per task of this shard.
        """
        losses = list(losses)
        if len(losses) != len(self.indices):
            raise ValueError(
                f"losses has {len(losses)} items; this shard has {len(self.indices)} tasks"
            )
        return torch.stack(losses).sum() * (self.world_size / self.num_tasks)

    def mean_gradient(self, gradients: Iterable[Any]) -> Any:
        """``(world_size / num_tasks) * sum(gradients)``, leaf by leaf: what to synchronise.

        ``gradients`` holds one meta-gradient per task of this shard, each a pytree of tensors
        of one structure (the dict that ``torch.func.grad`` returns for a dict of parameters).
        The result has that structure; averaged over ranks
        (``MetaGradientSync.backward`` with ``op="mean"``) it is the gradient of the mean loss
        over all tasks, as :meth:`mean_loss` gives for losses.

        Raises:
            ValueError: ``gradients`` does not hold one item per task of this shard, or the
                items' structures differ.
        """
        gradients = list(gradients)
        if len(gradients) != len(self.indices):
            raise ValueError(
                f"gradients has {len(gradients)} items; this shard has {len(self.indices)} tasks"
            )
        scale = self.world_size / self.num_tasks
        try:
            return optree.tree_map(
                lambda *leaves: functools.reduce(torch.add, leaves) * scale,
                *gradients,
                none_is_leaf=False,
            )
        except ValueError as error:
            raise ValueError(f"the per-task gradients differ in structure: {error}") from None


def shard_tasks(
    num_tasks: int | Sequence[Any], *, rank: int | None = None, world_size: int | None = None
) -> TaskShard:
    """Deterministically split ``num_tasks`` tasks (or a sequence's items) over the ranks.

    Args:
        num_tasks: the task count, or a sequence whose length is the task count.
        rank, world_size: default to this process's (see :func:`get_world_info`).

    Returns:
        This rank's :class:`TaskShard` (the first ``num_tasks % world_size`` ranks take one more).

    Raises:
        ValueError: fewer tasks than ranks (a rank without a task has no outer loss to
            backpropagate, and the others would wait for it), or a rank outside the world.
    """
    total = num_tasks if isinstance(num_tasks, int) else len(num_tasks)
    rank = get_world_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if isinstance(total, bool) or total < 1:
        raise ValueError(f"num_tasks must be a positive integer, got {num_tasks!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in a world of world_size={world_size}")
    if total < world_size:
        raise ValueError(
            f"num_tasks={total} is smaller than world_size={world_size}: every rank needs at least "
            f"one task; use at least {world_size} tasks or fewer processes"
        )
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return TaskShard(range(start, start + base + (rank < extra)), total, rank, world_size)
