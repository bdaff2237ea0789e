"""Data-parallel MAML with Adam inner steps: each process adapts its share of the tasks.

Run on one machine with two processes (gloo on CPU; NCCL, one GPU per process, when CUDA is
present)::

    torchrun --nproc_per_node=2 examples/distributed_maml.py
    torchrun --nproc_per_node=2 examples/distributed_maml.py --form meta-gradient

or in one process, ``python examples/distributed_maml.py``. Every outer iteration draws the same
``meta_batch`` sine-regression tasks on every rank (seeded by iteration and task index);
``shard_tasks`` gives each rank a contiguous share (uneven shares allowed), and each task is
adapted with ``inner_steps`` differentiable Adam steps, in one of two forms:

* ``meta-adam`` (default): ``MetaAdam`` steps on the module; the rank's outer loss is
  ``shard.mean_loss(losses)``, and ``sync_meta_gradients`` all-reduces the meta-gradients
  while its ``backward()`` runs;
* ``meta-gradient``: each task's meta-gradient is a value, ``torch.func.grad`` of its functional
  unroll compiled whole by ``@optcompile``; the rank averages them with
  ``shard.mean_gradient`` and ``sync.backward`` puts the mean over ranks in ``.grad``.

Either way every rank then holds the gradient of the mean loss over all tasks (the one a single
process would compute) and steps the same outer optimizer identically.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.func import functional_call, grad, grad_and_value

import optcompile
from optcompile import distributed as od


def sine_task(
    iteration: int, index: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """Task ``index`` of outer iteration ``iteration``: the same on every rank."""
    generator = torch.Generator().manual_seed(1_000_003 * iteration + index)
    amplitude = 0.5 + 4.5 * torch.rand((), generator=generator)
    phase = math.pi * torch.rand((), generator=generator)
    x = 10 * torch.rand(20, 1, generator=generator) - 5
    y = amplitude * torch.sin(x + phase)
    return tuple(t.to(device, dtype) for t in (x[:10], y[:10], x[10:], y[10:]))


def make_net(hidden: int, device: torch.device, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, 1),
    ).to(device, dtype)  # fmt: skip


def meta_gradient_function(net: nn.Module, inner_steps: int, backend: str = "inductor"):
    """``meta_gradient(params, x, y, xq, yq) -> (gradients, query loss)`` of one task.

    ``inner_steps`` functional Adam steps on ``(x, y)`` from ``params`` (a dict like
    ``net.named_parameters()``), then the loss on ``(xq, yq)``, differentiated with respect to
    ``params`` by ``torch.func``: model, inner gradients, updates and the backward in one graph
    compiled by ``@optcompile`` (``backend="eager"`` runs it uncompiled).
    """
    tx = optcompile.adam(lr=1e-2)

    def loss(params, x, y):
        return nn.functional.mse_loss(functional_call(net, params, (x,)), y)

    @optcompile.optcompile(backend=backend)
    def meta_gradient(params, x, y, xq, yq):
        def query_loss(params):
            fast, state = params, tx.init(params)
            for _ in range(inner_steps):
                updates, state = tx.update(
                    grad(loss)(fast, x, y), state, params=fast, inplace=False
                )
                fast = optcompile.apply_updates(fast, updates, inplace=False)
            return loss(fast, xq, yq)

        return grad_and_value(query_loss)(params)

    tx.init(dict(net.named_parameters()))  # prepares the update's kernels outside the graph
    return meta_gradient


def train(
    outer_iterations: int = 100,
    meta_batch: int = 8,
    inner_steps: int = 3,
    hidden: int = 64,
    *,
    form: str = "meta-adam",
    backend: str = "inductor",
    rank: int | None = None,
    world_size: int | None = None,
    log_every: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[float], nn.Module]:
    """MAML on sine tasks; the mean query loss per outer iteration, and the trained network.

    ``form``: ``"meta-adam"`` or ``"meta-gradient"`` (the module docstring); ``backend``: the
    meta-gradient form's ``@optcompile`` backend. With ``world_size`` > 1 a process group must be
    initialised; ``rank``/``world_size`` default to this process's (a lone process is rank 0 of 1
    and synchronises nothing).
    """
    if form not in ("meta-adam", "meta-gradient"):
        raise ValueError(f"form must be 'meta-adam' or 'meta-gradient', got {form!r}")
    info = od.get_world_info()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    use_cuda = torch.cuda.is_available() and dist.is_initialized() and world_size > 1
    device = torch.device(f"cuda:{od.get_local_rank()}" if use_cuda else "cpu")
    net = make_net(hidden, device, dtype)
    # From now on, every backward() (and sync.backward) all-reduces the gradients.
    sync = od.sync_meta_gradients(net) if world_size > 1 else None
    outer = torch.optim.Adam(net.parameters(), lr=1e-3)
    shard = od.shard_tasks(meta_batch, rank=rank, world_size=world_size)
    if form == "meta-adam":
        outer_step = _meta_adam_step(net, inner_steps, shard)
    else:
        outer_step = _meta_gradient_step(net, inner_steps, shard, sync, backend)
    history = []
    for iteration in range(outer_iterations):
        tasks = [sine_task(iteration, index, device, dtype) for index in shard]
        # If one rank raises, the others' backward fails too, naming that rank's error.
        with od.fail_together():
            outer.zero_grad()
            loss = outer_step(tasks)  # returns with .grad averaged over the ranks
        outer.step()
        # The logged value: the mean query loss over all tasks (one small all-reduce).
        total = loss.detach() / world_size
        if world_size > 1:
            dist.all_reduce(total)
        history.append(total.item())
        if log_every and rank == 0 and (iteration + 1) % log_every == 0:
            print(f"iteration {iteration + 1:4d}  mean query loss {history[-1]:.4f}")
    return history, net


def _meta_adam_step(net: nn.Module, inner_steps: int, shard: od.TaskShard):
    """``step(tasks) -> loss``: MetaAdam on the module, then the outer backward (synced)."""
    inner = optcompile.MetaAdam(net, lr=1e-2)
    net_state = optcompile.extract_state_dict(net, by="reference")
    inner_state = optcompile.extract_state_dict(inner, by="reference")

    def step(tasks):
        losses = []
        for x, y, xq, yq in tasks:
            for _ in range(inner_steps):
                inner.step(nn.functional.mse_loss(net(x), y))
            losses.append(nn.functional.mse_loss(net(xq), yq))
            optcompile.recover_state_dict(net, net_state)
            optcompile.recover_state_dict(inner, inner_state)
        loss = shard.mean_loss(losses)
        loss.backward()
        return loss

    return step


def _meta_gradient_step(net, inner_steps, shard, sync, backend):
    """``step(tasks) -> loss``: each task's meta-gradient as a value, their mean into ``.grad``."""
    meta_gradient = meta_gradient_function(net, inner_steps, backend)
    params = dict(net.named_parameters())

    def step(tasks):
        detached = {name: p.detach() for name, p in params.items()}
        gradients, losses = zip(*(meta_gradient(detached, *task) for task in tasks), strict=True)
        mean = shard.mean_gradient(gradients)
        if sync is not None:
            sync.backward(mean)
        else:  # a lone process: its mean is the gradient
            for name, p in params.items():
                p.grad = mean[name]
        return shard.mean_loss(losses)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-iterations", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--form", choices=("meta-adam", "meta-gradient"), default="meta-adam")
    args = parser.parse_args()
    world_size = od.get_world_size()
    # One process per core (or per GPU): the processes, not threads, give the parallelism.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // od.get_local_world_size()))
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(od.get_local_rank())
        dist.init_process_group(backend)
    try:
        train(
            args.outer_iterations,
            args.meta_batch,
            args.inner_steps,
            args.hidden,
            form=args.form,
            log_every=10,
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
