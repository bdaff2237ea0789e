"""Data-parallel meta-gradients: all-reduce ``.grad`` of the meta-parameters in the outer backward.

Each rank runs the inner loops of its tasks and backpropagates its outer loss. A
``register_post_accumulate_grad_hook`` on every meta-parameter fires when the outer
``backward()`` has accumulated that parameter's gradient into ``.grad``. Those hooks never fire
for the inner ``torch.autograd.grad(create_graph=True)`` calls of a meta-optimizer, which return
gradients without accumulating them, so no inner step triggers communication (the pitfall of
DDP with higher-order gradients, pytorch #47562, #63929).

Parameters are grouped, in reverse registration order (roughly the order the backward reaches
them), into buckets of at most ``bucket_mb`` MiB of one dtype and device. A bucket is flattened
and all-reduced asynchronously as soon as all of its gradients are in, while the backward goes
on with the rest. Buckets are launched in a fixed order on every rank, whatever order the
gradients arrive in, so the collectives always match. At the end of the backward (an autograd
engine callback) the remaining buckets are launched, every all-reduce is awaited, and

    g_p <- (1/W) sum_r g_p^(r)   (op="mean")      or      g_p <- sum_r g_p^(r)   (op="sum")

is written into ``.grad``: when ``backward()`` returns, the gradients are synchronised and
``optimizer.step()`` can follow. With each rank's loss built by ``TaskShard.mean_loss``, the
mean equals the gradient of one process's mean loss over all tasks.

A meta-gradient that comes out of a function instead of an outer backward (``torch.func.grad``
of the unrolled inner loop, compiled whole by ``@optcompile``) goes through the same hooks:
:meth:`MetaGradientSync.backward` accumulates it into ``.grad`` with one autograd pass whose
roots are the meta-parameters themselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from optcompile.distributed.faults import peer_failures

__all__ = ["MetaGradientSync", "sync_meta_gradients"]

_OPS = ("mean", "sum")


def _collect(
    module_or_params: nn.Module | Iterable[torch.Tensor],
) -> tuple[list[torch.Tensor], list[str] | None]:
    """The meta-parameters, and their names when they come from a module (else None)."""
    names: list[str] | None = None
    if isinstance(module_or_params, nn.Module):
        named = [(n, p) for n, p in module_or_params.named_parameters() if p.requires_grad]
        names = [n for n, _ in named]
        params = [p for _, p in named]
        what = f"module {type(module_or_params).__name__}"
    elif isinstance(module_or_params, torch.Tensor):
        raise TypeError(
            "module_or_params must be an nn.Module or an iterable of tensors, got a single "
            "tensor; wrap it in a list"
        )
    else:
        try:
            given = list(module_or_params)
        except TypeError:
            raise TypeError(
                f"module_or_params must be an nn.Module or an iterable of tensors, got "
                f"{type(module_or_params).__name__}"
            ) from None
        params, seen = [], set()
        for i, p in enumerate(given):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"module_or_params[{i}] is a {type(p).__name__}, not a tensor")
            if not (p.is_leaf and p.requires_grad):
                raise ValueError(
                    f"module_or_params[{i}] is not a leaf tensor that requires grad; only such "
                    f"tensors accumulate .grad in the outer backward"
                )
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
        what = "module_or_params"
    if not params:
        raise ValueError(f"{what} has no tensor that requires grad: nothing to synchronise")
    return params, names


def _buckets(params: list[torch.Tensor], cap_bytes: float) -> list[list[int]]:
    """Indices of ``params`` in buckets: reverse order, one dtype/device each, <= cap bytes."""
    buckets: list[list[int]] = []
    open_for: dict[tuple[torch.dtype, torch.device], tuple[list[int], list[int]]] = {}
    for i in reversed(range(len(params))):
        p = params[i]
        key = (p.dtype, p.device)
        nbytes = p.numel() * p.element_size()
        current = open_for.get(key)
        if current is None or (current[0] and current[1][0] + nbytes > cap_bytes):
            current = ([], [0])
            open_for[key] = current
            buckets.append(current[0])
        current[0].append(i)
        current[1][0] += nbytes
    return buckets


class MetaGradientSync:
    """The hooks that all-reduce meta-gradients; made by :func:`sync_meta_gradients`.

    Attributes:
        params: the meta-parameters, in registration order.
        names: their names in the module (``named_parameters``), or None when
            ``sync_meta_gradients`` was given tensors.
        buckets: per bucket, the indices into ``params`` it holds, in launch order.
        hook_calls: per meta-parameter, how many times its hook has fired.
        syncs: how many outer backward passes have been synchronised.
        last_wait_s: seconds the end of the last synchronised backward waited for all-reduces
            still in flight (the communication that did not overlap with the backward).
        last_finish_s: seconds from the end of that backward's local work (its engine callback)
            until the synchronised gradients were in ``.grad``: launching the last buckets,
            waiting, and copying back.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        *,
        op: str,
        group: Any,
        bucket_mb: float,
        names: list[str] | None = None,
    ) -> None:
        self.params = params
        self.names = names
        self.op = op
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.buckets = _buckets(params, bucket_mb * 2**20)
        self._bucket_of = [0] * len(params)
        for b, members in enumerate(self.buckets):
            for i in members:
                self._bucket_of[i] = b
        self.hook_calls = [0] * len(params)
        self.syncs = 0
        self.last_wait_s = 0.0
        self.last_finish_s = 0.0
        self._enabled = True
        self._active = False
        self._task = -1
        self._missing: list[int] = []
        self._arrived: list[bool] = []
        self._next = 0
        self._works: list[tuple[int, torch.Tensor, Any]] = []
        self._handles = [
            p.register_post_accumulate_grad_hook(functools.partial(self._accumulated, i))
            for i, p in enumerate(params)
        ]

    def _accumulated(self, index: int, param: torch.Tensor) -> None:
        if not self._enabled:
            self.hook_calls[index] += 1
            return
        task = torch._C._current_graph_task_id()
        if self._active and task != self._task:
            # The backward that launched the buckets in flight died before its end-of-backward
            # callback, or another one runs concurrently: the ranks' collectives no longer match.
            raise RuntimeError(
                "an outer backward started while the previous one's meta-gradient all-reduces "
                "were unfinished (it raised, or two backward passes run at once); the ranks are "
                "out of step: restart the process group"
            )
        if not self._active:
            self._active = True
            self._task = task
            self._missing = [len(members) for members in self.buckets]
            self._arrived = [False] * len(self.params)
            self._next = 0
            self._works = []
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
        self.hook_calls[index] += 1
        if self._arrived[index]:
            # Only two backward passes running at once (threads) can do this; the first one's
            # bucket is already in flight with half the gradient.
            raise RuntimeError(
                f"meta-parameter {index} accumulated twice before its gradients were synchronised: "
                f"run one outer backward at a time when sync_meta_gradients is active"
            )
        self._arrived[index] = True
        self._missing[self._bucket_of[index]] -= 1
        while self._next < len(self.buckets) and self._missing[self._next] == 0:
            self._launch(self._next)

    def _launch(self, b: int) -> None:
        pieces = []
        for i in self.buckets[b]:
            p = self.params[i]
            g = p.grad
            # A parameter this rank's loss did not reach contributes zeros; others may not.
            pieces.append(torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1))
        flat = torch.cat(pieces)
        work = dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        self._works.append((b, flat, work))
        self._next = b + 1

    def _finish(self) -> None:
        begin = time.perf_counter()
        try:
            while self._next < len(self.buckets):
                self._launch(self._next)
            start = time.perf_counter()
            for _, _, work in self._works:
                try:
                    work.wait()
                except Exception as error:
                    causes = peer_failures()
                    cause = (
                        "; ".join(f"rank {r} raised {m}" for r, m in sorted(causes.items()))
                        if causes
                        else "another rank most likely raised or exited before its outer "
                        "backward (run the loop inside optcompile.distributed.fail_together() "
                        "to see its error here)"
                    )
                    raise RuntimeError(
                        f"rank {dist.get_rank()}: the all-reduce of meta-gradients failed: "
                        f"{cause} ({type(error).__name__}: {error})"
                    ) from error
            self.last_wait_s = time.perf_counter() - start
            for b, flat, _ in self._works:
                if self.op == "mean":
                    flat.div_(self.world_size)
                offset = 0
                for i in self.buckets[b]:
                    p = self.params[i]
                    value = flat[offset : offset + p.numel()].view_as(p)
                    offset += p.numel()
                    if p.grad is None:
                        p.grad = value.clone()
                    else:
                        p.grad.copy_(value)
            self.syncs += 1
            self.last_finish_s = time.perf_counter() - begin
        finally:
            self._active = False
            self._works = []

    def backward(self, gradients: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> None:
        """Accumulate meta-gradients computed without an outer backward into ``.grad``, synced.

        For the functional forms, where the meta-gradient is what a function returns
        (``torch.func.grad`` of the unrolled inner loop, compiled whole by ``@optcompile``)::

            grads = shard.mean_gradient(meta_gradient(params, *task) for task in my_tasks)
            sync.backward(grads)   # .grad = the mean over ranks, as after loss.backward()
            optimizer.step()

        One autograd pass whose roots are the meta-parameters, ``.grad += g`` for each, fires
        the same hooks as an outer backward: the same buckets, the same all-reduce, and
        ``no_sync()`` applies. Every rank must call it (or run an outer backward) in step.

        Args:
            gradients: one tensor per meta-parameter, the shape of that parameter: a mapping
                from the names of ``module.named_parameters()`` (when the sync was made from a
                module; what ``torch.func.grad`` of a function of
                ``dict(module.named_parameters())`` returns) or a sequence in the order of
                :attr:`params`.

        Raises:
            TypeError: ``gradients`` is neither a mapping nor a sequence, or holds a non-tensor.
            ValueError: its names or count differ from the meta-parameters', or a tensor's
                shape, dtype or device differs from its parameter's.
        """
        ordered = self._ordered(gradients)
        for i, (p, g) in enumerate(zip(self.params, ordered, strict=True)):
            where = f"gradients[{self.names[i]!r}]" if self.names else f"gradients[{i}]"
            if not isinstance(g, torch.Tensor):
                raise TypeError(f"{where} is a {type(g).__name__}, not a tensor")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(
                    f"{where} has shape {tuple(g.shape)}, {g.dtype} on {g.device}; its "
                    f"meta-parameter has shape {tuple(p.shape)}, {p.dtype} on {p.device}"
                )
        torch.autograd.backward(self.params, grad_tensors=[g.detach() for g in ordered])

    def _ordered(
        self, gradients: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``gradients`` as a list in the order of :attr:`params`."""
        if isinstance(gradients, Mapping):
            if self.names is None:
                raise TypeError(
                    "gradients is a mapping, but sync_meta_gradients was given tensors, not a "
                    "module: pass the gradients as a sequence in the order of those tensors"
                )
            if set(gradients) != set(self.names):
                missing = sorted(set(self.names) - set(gradients))
                extra = sorted(set(gradients) - set(self.names))
                raise ValueError(
                    f"gradients must be keyed by the meta-parameters' names; missing {missing}, "
                    f"unknown {extra}"
                )
            return [gradients[name] for name in self.names]
        if isinstance(gradients, torch.Tensor | str | bytes) or not isinstance(gradients, Sequence):
            raise TypeError(
                f"gradients must be a mapping of names to tensors or a sequence of tensors, "
                f"got {type(gradients).__name__}"
            )
        if len(gradients) != len(self.params):
            raise ValueError(
                f"gradients has {len(gradients)} tensors; there are {len(self.params)} "
                f"meta-parameters"
            )
        return list(gradients)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Within this block, backward passes accumulate ``.grad`` locally, without communicating.

        For gradient accumulation over several backward passes: run all but the last inside
        ``no_sync()``; the last (outside) all-reduces the accumulated ``.grad``. Every rank must
        do the same.
        """
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def remove(self) -> None:
        """Remove the hooks: later backward passes are not synchronised."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> MetaGradientSync:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def sync_meta_gradients(
    module_or_params: nn.Module | Iterable[torch.Tensor],
    *,
    op: str = "mean",
    group: Any = None,
    bucket_mb: float = 25,
    broadcast_from: int | None = 0,
) -> MetaGradientSync:
    """All-reduce the meta-parameters' ``.grad`` during every outer backward, from now on.

    Call it once, after ``torch.distributed.init_process_group`` and before training. Every
    ``loss.backward()`` then returns with ``.grad`` averaged (``op="mean"``) or summed over the
    ranks, and ``optimizer.step()`` may follow at once; the inner ``MetaOptimizer.step`` calls
    (``autograd.grad``) never communicate.

    Args:
        module_or_params: the module whose parameters that require grad are the
            meta-parameters, or an iterable of leaf tensors.
        op: ``"mean"`` (the average over ranks) or ``"sum"``.
        group: the process group (the default group when None).
        bucket_mb: at most this many MiB of gradients per all-reduce; smaller buckets start
            communicating earlier in the backward, larger ones make fewer calls.
        broadcast_from: copy this rank's parameter values to every rank first, so that all ranks
            start from the same meta-parameters (as DDP does); None leaves them as they are.

    Returns:
        A :class:`MetaGradientSync`: ``.remove()`` the hooks, ``with .no_sync():`` for local
        accumulation, ``.hook_calls`` and ``.last_wait_s`` to inspect.

    Raises:
        RuntimeError: no process group is initialised.
        ValueError: an unknown ``op``, a non-positive ``bucket_mb``, no meta-parameter, or ranks
            whose meta-parameters differ in number, shape or dtype.
        TypeError: ``module_or_params`` is neither a module nor an iterable of tensors.
    """
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")
    if (
        isinstance(bucket_mb, bool)
        or not isinstance(bucket_mb, int | float)
        or not (math.isfinite(bucket_mb) and bucket_mb > 0)
    ):
        raise ValueError(f"bucket_mb must be a positive number of MiB, got {bucket_mb!r}")
    params, names = _collect(module_or_params)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "sync_meta_gradients needs a process group: call "
            "torch.distributed.init_process_group('gloo' or 'nccl') first (torchrun sets the "
            "environment it reads)"
        )
    layout = [(tuple(p.shape), str(p.dtype)) for p in params]
    layouts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(layouts, layout, group=group)
    for rank, other in enumerate(layouts):
        if other != layout:
            raise ValueError(
                f"the meta-parameters differ between ranks (rank {dist.get_rank(group)} has "
                f"{len(layout)}, rank {rank} has {len(other)}, or their shapes/dtypes differ); "
                f"every rank must register the same model"
            )
    if broadcast_from is not None:
        with torch.no_grad():
            for p in params:
                dist.broadcast(p, src=broadcast_from, group=group)
    return MetaGradientSync(params, op=op, group=group, bucket_mb=bucket_mb, names=names)
