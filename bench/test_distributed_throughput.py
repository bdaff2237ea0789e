"""Data-parallel MAML: 2 processes x 1 thread against 1 process x 1 thread, on the same tasks.

Run: ``python -m pytest bench/test_distributed_throughput.py -q -s``. Three processes are
spawned once (gloo on 127.0.0.1): a *pair* (ranks 0 and 1) that only ever runs the data-parallel
iteration, and a *single* process (rank 2) that only ever runs the whole meta-batch. Rounds
alternate, round-robin, between

* ``alone``: the single process runs the whole meta-batch (M tasks, K inner MetaAdam steps
  each, the outer backward and step) while the pair sleeps in a blocking store wait;
* ``parallel``: each process of the pair runs its M/2 tasks and the outer backward, with
  ``sync_meta_gradients`` (over the pair's group) all-reducing the meta-gradients during it,
  then the step, while the single process sleeps.

Each process keeps to one role, as in real runs, because a process's history changes its speed:
in an earlier version rank 0 ran both roles and rank 1 only the parallel one, and in a run that
recorded both ranks' CPU times rank 1 was slower than rank 0 on the same work in most rounds,
with rank 0 waiting for it in the all-reduce; with glibc's allocator told to keep freed memory
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) the two ranks were even, so the
allocators' states, set by what each process had run, made the difference.

The throughput ratio is ``median(alone) / median(parallel)`` of the wall time per outer
iteration (the single process's; rank 0's in parallel, where both end together); the target
on a 2-core host is 1.7x. On a host shared with other programs the wall
time depends on how much of each core the processes get, so ``cpu_speedup`` also compares the
busiest rank's CPU time (``time.thread_time``): the speed-up with both cores to themselves,
communication waits excluded, and ``host_compute`` and ``host_memory`` measure, in the same
rounds, what the host gives two processes on fixed, perfectly parallel work (2.0 on two free
cores with memory bandwidth to spare): compute-bound matmuls, and memory-bound passes over more
data than the shared L3 cache holds. ``BENCH_TASK_SAMPLES`` (default 32) sets the samples per
task's support and query sets: more samples, more matmul work per parameter. The overlap
is shown by

* ``finish_ms``: the time from the end of the outer backward's local work to the moment the
  synchronised gradients are in ``.grad`` and ``step()`` may run (``backward()`` returns then:
  launching the last buckets, waiting for the all-reduces in flight, copying back);
* ``exposed_ms``: how long the end of the backward waited for all-reduces still in flight
  (``MetaGradientSync.last_wait_s``), against ``allreduce_ms``, one blocking all-reduce of the
  same bytes: the difference was hidden behind the backward. ``allreduce_after_compute_ms`` is
  that all-reduce started right after both ranks ran the compute calibration, as the one at
  the end of an outer backward is: on a virtual machine, threads that slept through a compute
  phase can take milliseconds to wake, and the back-to-back figure hides that.

Results depend on what else runs on the machine: compare ratios within one run only. Each task
is adapted by K ``MetaAdam`` steps on the module, on the eager backend unless ``BENCH_BACKEND``
names another; ``BENCH_FORM=whole-step`` adapts it instead by K functional Adam steps, each
compiled whole by ``@optcompile`` (model, loss, inner gradient, update);
``BENCH_FORM=meta-gradient`` computes each task's meta-gradient as a value, ``torch.func.grad``
of its K-step unroll compiled as one graph (``maml_problem.meta_gradient_adapter``), and
synchronises the shard's mean with ``MetaGradientSync.backward``: no autograd graph is kept
across tasks, and nothing overlaps the one all-reduce (``finish_ms`` is then all of it). At the
end the bench checks that the pair's parameters are still equal.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _report import add_row
from maml_problem import make_net, meta_adam_adapter, meta_gradient_adapter, whole_step_adapter

META_BATCH = 8
INNER_STEPS = 5
HIDDEN = 256
TASK_SAMPLES = int(os.environ.get("BENCH_TASK_SAMPLES", "32"))  # support and query, each
ROUNDS = 31  # alone/parallel pairs, after one warm-up of each
BUCKET_MB = 0.25


def _problem():
    net = make_net(HIDDEN)
    g = torch.Generator().manual_seed(2)
    tasks = [
        tuple(torch.randn(TASK_SAMPLES, d, generator=g) for d in (128, 10, 128, 10))
        for _ in range(META_BATCH)
    ]
    return net, tasks


def _task_loss(net, form):
    """``task_loss(x, y, xq, yq)``: one task's query loss after its inner adaptation; the
    module is back at its initial weights when it returns (the loss keeps its graph to them)."""
    if form == "whole-step":
        adapt, loss = whole_step_adapter(net)
        return lambda x, y, xq, yq: loss(adapt(x, y)[0], xq, yq)
    adapt, restore = meta_adam_adapter(net, os.environ.get("BENCH_BACKEND", "eager"))

    def task_loss(x, y, xq, yq):
        adapt(x, y)
        loss = ((net(xq) - yq) ** 2).mean()
        restore()
        return loss

    return task_loss


def _outer_iteration_builder(net, form):
    """``iteration(outer, tasks, shard, sync)``: the shard's tasks, their meta-gradient in
    ``.grad`` (all-reduced by ``sync`` unless it is None), then the outer step."""
    if form == "meta-gradient":
        meta_gradient = meta_gradient_adapter(net)
        params = dict(net.named_parameters())

        def iteration(outer, tasks, shard, sync):
            detached = {k: v.detach() for k, v in params.items()}
            mean = shard.mean_gradient(meta_gradient(detached, *tasks[i]) for i in shard)
            outer.zero_grad()
            if sync is None:
                torch.autograd.backward(list(params.values()), [mean[k] for k in params])
            else:
                sync.backward(mean)
            outer.step()

        return iteration
    task_loss = _task_loss(net, form)

    def iteration(outer, tasks, shard, sync):
        losses = [task_loss(*tasks[index]) for index in shard]
        outer.zero_grad()
        shard.mean_loss(losses).backward()
        outer.step()

    return iteration


def _compute_calibration() -> None:
    """Fixed, perfectly parallel, compute-bound work (matmuls in L2): what the host gives two
    processes' arithmetic."""
    a = torch.full((256, 256), 0.01)
    for _ in range(100):
        a = torch.tanh(a @ a)


@functools.cache
def _stream() -> torch.Tensor:
    return torch.zeros(16 * 2**20)  # 64 MiB, allocated once per process (untimed round 0)


def _memory_calibration() -> None:
    """Fixed, perfectly parallel, memory-bound work: passes over 64 MiB per process (two
    processes' data, 128 MiB, is 4x the L3 cache): what the host gives two processes' memory
    traffic."""
    for _ in range(8):
        _stream().add_(1.0)


CALIBRATIONS = {"compute": _compute_calibration, "memory": _memory_calibration}
SINGLE = 2  # the rank that runs the whole meta-batch; ranks 0 and 1 are the pair
MODES = ("alone", "parallel") + tuple(
    f"{kind}_{side}" for kind in CALIBRATIONS for side in ("alone", "parallel")
)


def _worker(rank: int, world: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(GLOO_SOCKET_IFNAME="lo")
    from optcompile import distributed as od

    # Generous timeouts: with BENCH_FORM=whole-step the first round compiles in each process.
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=datetime.timedelta(300))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(300)
    )
    pair = dist.new_group([0, 1])  # every rank takes part in creating it
    net, tasks = _problem()
    in_pair = rank != SINGLE
    sync = od.sync_meta_gradients(net, bucket_mb=BUCKET_MB, group=pair) if in_pair else None
    iteration = _outer_iteration_builder(net, os.environ.get("BENCH_FORM", "meta-adam"))
    outer = torch.optim.Adam(net.parameters(), lr=1e-3)
    shard = (
        od.shard_tasks(META_BATCH, rank=rank, world_size=2)
        if in_pair
        else od.shard_tasks(META_BATCH, rank=0, world_size=1)
    )
    rows = []
    for round_, mode, repeat in itertools.product(range(ROUNDS + 1), MODES, (0, 1)):
        dist.barrier()
        key = f"{mode}{round_}.{repeat}"
        runs_here = in_pair == mode.endswith("parallel")
        wall, cpu = time.perf_counter(), time.thread_time()
        if runs_here:
            if mode not in ("alone", "parallel"):
                CALIBRATIONS[mode.split("_")[0]]()
            else:
                iteration(outer, tasks, shard, sync)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if runs_here and rank in (0, SINGLE):
            store.set(key, "done")
        elif not runs_here:
            store.wait([key])  # blocks on a socket: no CPU used
        if mode.endswith("parallel") and in_pair:
            # The busiest rank's CPU time (untimed): what the wall time would be without
            # other programs competing for the cores.
            cpu_max = torch.tensor(cpu, dtype=torch.float64)
            dist.all_reduce(cpu_max, op=dist.ReduceOp.MAX, group=pair)
            cpu = cpu_max.item()
        if round_ > 0 and repeat == 1 and runs_here and rank in (0, SINGLE):
            synced = mode == "parallel"
            rows.append(
                {
                    "mode": mode,
                    "wall": wall,
                    "cpu": cpu,
                    "finish": sync.last_finish_s if synced else 0.0,
                    "exposed": sync.last_wait_s if synced else 0.0,
                }
            )
    # One blocking all-reduce of the same bytes over the pair, for scale; before it, how far
    # the pair's parameters drifted apart (data-parallel training keeps them equal).
    blocking, after_compute, drift = [], [], torch.zeros((), dtype=torch.float64)
    if in_pair:
        flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        rank0 = flat.clone()
        dist.broadcast(rank0, src=0, group=pair)
        drift = (flat - rank0).abs().max().double()
        dist.all_reduce(drift, op=dist.ReduceOp.MAX, group=pair)
        for _ in range(5):
            dist.barrier(group=pair)
            start = time.perf_counter()
            dist.all_reduce(flat, group=pair)
            blocking.append(time.perf_counter() - start)
        for _ in range(5):
            dist.barrier(group=pair)
            _compute_calibration()
            start = time.perf_counter()
            dist.all_reduce(flat, group=pair)
            after_compute.append(time.perf_counter() - start)
    gathered: list = [None] * world if rank == 0 else []
    dist.gather_object(rows, gathered if rank == 0 else None, dst=0)
    if rank == 0:
        # Each mode's rows come from one process, in round order: pairs line up by round.
        rows = [row for part in gathered for row in part]
        queue.put(
            {
                "rows": rows,
                "allreduce": statistics.median(blocking),
                "allreduce_after_compute": statistics.median(after_compute),
                "buckets": len(sync.buckets),
                "drift": drift.item(),
            }
        )
    dist.destroy_process_group()


def test_data_parallel_maml_throughput_and_overlap():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, 3, port, queue), daemon=True) for r in range(3)]
    for p in procs:
        p.start()
    try:
        result = queue.get(timeout=540)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    rows = result["rows"]
    med = {
        mode: {
            k: statistics.median(r[k] for r in rows if r["mode"] == mode)
            for k in rows[0]
            if k != "mode"
        }
        for mode in ("alone", "parallel")
    }
    walls = {mode: sorted(r["wall"] for r in rows if r["mode"] == mode) for mode in med}
    ratio = med["alone"]["wall"] / med["parallel"]["wall"]
    ratios = [
        a / p
        for a, p in zip(
            [r["wall"] for r in rows if r["mode"] == "alone"],
            [r["wall"] for r in rows if r["mode"] == "parallel"],
            strict=True,
        )
    ]
    # Each process does the same fixed work: on two free cores both finish in the time one
    # takes alone, i.e. 2.0x the throughput; a host shared with other programs gives less.
    host = {
        kind: 2
        * statistics.median(r["wall"] for r in rows if r["mode"] == f"{kind}_alone")
        / statistics.median(r["wall"] for r in rows if r["mode"] == f"{kind}_parallel")
        for kind in CALIBRATIONS
    }
    load = os.getloadavg()[0]
    for mode in ("alone", "parallel"):
        add_row(
            "distributed",
            mode=mode,
            processes=1 if mode == "alone" else 2,
            tasks_per_s=META_BATCH / med[mode]["wall"],
            wall_ms=1e3 * med[mode]["wall"],
            wall_ms_min=1e3 * walls[mode][0],
            wall_ms_max=1e3 * walls[mode][-1],
            busiest_cpu_ms=1e3 * med[mode]["cpu"],
            finish_ms=1e3 * med[mode]["finish"],
            exposed_ms=1e3 * med[mode]["exposed"],
            allreduce_ms=1e3 * result["allreduce"] if mode == "parallel" else 0.0,
            allreduce_after_compute_ms=(
                1e3 * result["allreduce_after_compute"] if mode == "parallel" else 0.0
            ),
            buckets=result["buckets"] if mode == "parallel" else 0,
            speedup=ratio if mode == "parallel" else 1.0,
            speedup_min=min(ratios) if mode == "parallel" else 1.0,
            speedup_max=max(ratios) if mode == "parallel" else 1.0,
            cpu_speedup=med["alone"]["cpu"] / med[mode]["cpu"],
            host_compute=host["compute"],
            host_memory=host["memory"],
            load_1min=load,
        )
    print(
        f"\nthroughput ratio (2 procs / 1 proc): {ratio:.2f}x median, "
        f"{min(ratios):.2f}-{max(ratios):.2f} per round; load average {load:.1f}; "
        f"the host gives two processes {host['compute']:.2f}x one process's throughput on "
        f"compute-bound work, {host['memory']:.2f}x on memory-bound work"
    )
    assert result["drift"] == 0.0, f"the pair's parameters differ by {result['drift']}"
    assert ratio > 0.5  # a smoke bound; the target (1.7x) needs an otherwise idle 2-core host
