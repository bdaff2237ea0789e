"""optcompile.distributed: data-parallel meta-gradients equal one process over all tasks.

Two processes on 127.0.0.1 (gloo; RPC over TensorPipe on the loopback), spawned from the test.
Process start-up costs seconds, so each spawned run checks several things; every run has a
process-group or RPC timeout and a join deadline after which the ranks are killed.
"""

from __future__ import annotations

import datetime
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _spawn import run_ranks, values
from torch import nn

import optcompile
from optcompile import distributed as od

PG_TIMEOUT = datetime.timedelta(seconds=20)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
INNER_STEPS = 3
META_OPTIMIZERS = {
    "MetaSGD": {"lr": 0.1, "momentum": 0.5},
    "MetaAdam": {"lr": 0.05},
    "MetaAdamW": {"lr": 0.05},
    "MetaRMSProp": {"lr": 0.02, "momentum": 0.3},
    "MetaAdaGrad": {"lr": 0.1},
    "MetaAdaDelta": {"lr": 1.0},
    "MetaAdamax": {"lr": 0.05},
    "MetaRAdam": {"lr": 0.05},
    "MetaAdaBelief": {"lr": 0.05},
    "MetaAdan": {"lr": 0.05},
    "MetaLion": {"lr": 0.01},
    "MetaNAdam": {"lr": 0.05},
    "MetaNAdamW": {"lr": 0.05},
    "MetaRProp": {"lr": 0.01},
    "MetaSignSGD": {"lr": 0.01},
    "MetaYogi": {"lr": 0.05},
    "MetaLamb": {"lr": 0.05, "weight_decay": 0.01},
    "MetaLARS": {"lr": 1.0, "trust_coefficient": 0.02},
    "MetaNovoGrad": {"lr": 0.05},
}


def test_every_meta_optimizer_is_covered():
    exported = {
        name for name in optcompile.__all__ if name.startswith("Meta") and name != "MetaOptimizer"
    }
    # TorchOpt spells some names two ways (MetaAdaGrad/MetaAdagrad): one class, one entry here.
    classes = {getattr(optcompile, name) for name in exported}
    assert classes == {getattr(optcompile, name) for name in META_OPTIMIZERS}


# --- the problem every rank and the one-process reference solve -------------------------------


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _tasks(n: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    return [
        tuple(torch.randn(6, d, generator=g, dtype=torch.float64) for d in (3, 2, 3, 2))
        for _ in range(n)
    ]


def _task_loss(net: nn.Module, opt_name: str, task, forward=None) -> torch.Tensor:
    """K inner steps on the support set, then the query loss (the graph reaches net's params)."""
    forward = net if forward is None else forward
    x, y, xq, yq = task
    state = optcompile.extract_state_dict(net, by="reference")
    inner = getattr(optcompile, opt_name)(forward, **META_OPTIMIZERS[opt_name])
    for _ in range(INNER_STEPS):
        inner.step(((forward(x) - y) ** 2).mean())
    loss = ((forward(xq) - yq) ** 2).mean()
    optcompile.recover_state_dict(net, state)
    return loss


def _reference_grads(opt_name: str, tasks) -> list[torch.Tensor]:
    """One process over all tasks, the loss averaged over them."""
    net = _net()
    torch.stack([_task_loss(net, opt_name, t) for t in tasks]).mean().backward()
    return [p.grad.clone() for p in net.parameters()]


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _init_gloo(rank: int, world: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=PG_TIMEOUT)


# --- data parallel: every Meta*, even and uneven shares, hook counts ---------------------------


def _reference_on_one_rank(owner: int, opt_name: str, tasks) -> list[torch.Tensor]:
    """The one-process reference, computed by rank ``owner`` alone and broadcast."""
    if dist.get_rank() == owner:
        grads = _reference_grads(opt_name, tasks)
    else:
        grads = [torch.empty_like(p) for p in _net().parameters()]
    for g in grads:
        dist.broadcast(g, src=owner)
    return grads


def _max_error(params, expected, scale: float = 1.0) -> float:
    return max(
        (p.grad - scale * e).abs().max().item() for p, e in zip(params, expected, strict=True)
    )


def _data_parallel(rank: int, world: int) -> dict:
    errors: dict[str, float] = {}
    hook_report = {}
    for num_tasks in (3, 4):  # 2/1 and 2/2
        tasks = _tasks(num_tasks)
        shard = od.shard_tasks(num_tasks)
        for i, name in enumerate(META_OPTIMIZERS):
            expected = _reference_on_one_rank(i % world, name, tasks)
            net = _net()
            # A tiny bucket cap in one case: several buckets, launched while backward runs.
            bucket_mb = 1e-4 if i % 2 else 25
            with od.sync_meta_gradients(net, bucket_mb=bucket_mb) as sync:
                losses = [_task_loss(net, name, t) for t in shard.select(tasks)]
                inner_calls = sum(sync.hook_calls)  # inner steps ran: no hook may have fired
                shard.mean_loss(losses).backward()
                calls = list(sync.hook_calls)
                buckets = len(sync.buckets)
            errors[f"{name}/{num_tasks}"] = _max_error(net.parameters(), expected)
            hook_report[f"{name}/{num_tasks}"] = (inner_calls, calls, buckets)
    # Accumulation: a backward inside no_sync() stays local, the next one all-reduces the sum.
    net = _net()
    tasks = _tasks(4)
    sync = od.sync_meta_gradients(net, op="sum")
    mine = od.shard_tasks(4).select(tasks)
    with sync.no_sync():
        torch.stack([_task_loss(net, "MetaSGD", t) for t in mine]).sum().backward()
    syncs_inside = sync.syncs
    torch.stack([_task_loss(net, "MetaSGD", t) for t in mine]).sum().backward()
    expected = _reference_on_one_rank(0, "MetaSGD", tasks)
    return {
        "errors": errors,
        "hooks": hook_report,
        "sum_calls": list(sync.hook_calls),
        "syncs": (syncs_inside, sync.syncs),
        # 2 backward passes x (sum over 4 tasks = 4 x the mean)
        "sum_error": _max_error(net.parameters(), expected, scale=8.0),
    }


def _functional_meta_gradient(net: nn.Module, task) -> dict[str, torch.Tensor]:
    """One task's meta-gradient as a value: ``torch.func.grad`` of K functional Adam steps."""
    from torch.func import grad

    params = {k: v.detach() for k, v in net.named_parameters()}
    return grad(_functional_task_loss, argnums=1)(net, params, task)


def _functional_task_loss(net: nn.Module, params: dict, task) -> torch.Tensor:
    from torch.func import functional_call, grad

    x, y, xq, yq = task
    tx = optcompile.adam(lr=0.05)

    def loss(p, a, b):
        return ((functional_call(net, p, (a,)) - b) ** 2).mean()

    state = tx.init(params)
    for _ in range(INNER_STEPS):
        updates, state = tx.update(grad(loss)(params, x, y), state, params=params, inplace=False)
        params = optcompile.apply_updates(params, updates, inplace=False)
    return loss(params, xq, yq)


def _functional(rank: int, world: int) -> dict:
    """Meta-gradients computed as values, synchronised by ``sync.backward``."""
    errors, hooks, unchanged = {}, {}, {}
    for num_tasks in (3, 4):
        tasks = _tasks(num_tasks)
        # The reference: one process, an outer backward of the mean loss over all tasks.
        if rank == 0:
            reference = _net()
            params = dict(reference.named_parameters())
            torch.stack(
                [_functional_task_loss(reference, params, t) for t in tasks]
            ).mean().backward()
            expected = [p.grad.clone() for p in reference.parameters()]
        else:
            expected = [torch.empty_like(p) for p in _net().parameters()]
        for g in expected:
            dist.broadcast(g, src=0)
        shard = od.shard_tasks(num_tasks)
        for as_mapping in (True, False):
            net = _net()
            with od.sync_meta_gradients(net, bucket_mb=1e-4) as sync:
                mean = shard.mean_gradient(
                    _functional_meta_gradient(net, t) for t in shard.select(tasks)
                )
                local = {k: v.clone() for k, v in mean.items()}
                sync.backward(mean if as_mapping else list(mean.values()))
                hooks[f"{num_tasks}/{as_mapping}"] = (list(sync.hook_calls), sync.syncs)
                # The caller's gradients are read, never overwritten by the synchronised mean.
                unchanged[f"{num_tasks}/{as_mapping}"] = all(
                    torch.equal(mean[k], local[k]) for k in mean
                )
            errors[f"{num_tasks}/{as_mapping}"] = _max_error(net.parameters(), expected)
    return {
        "functional_errors": errors,
        "functional_hooks": hooks,
        "functional_inputs_unchanged": unchanged,
    }


def _ddp(rank: int, world: int) -> dict:
    net = _net()
    ddp = nn.parallel.DistributedDataParallel(net)
    try:
        optcompile.MetaSGD(ddp.module, lr=0.1)
        trap = None
    except ValueError as error:
        trap = str(error)
    tasks = _tasks(3)
    shard = od.shard_tasks(len(tasks))
    # Through forward: the meta-optimizer holds the wrapper and every call goes through ddp(x).
    losses = [_task_loss(net, "MetaSGD", t, forward=ddp) for t in shard.select(tasks)]
    shard.mean_loss(losses).backward()
    error = _max_error(net.parameters(), _reference_on_one_rank(1, "MetaSGD", tasks))
    return {"trap": trap, "ddp_error": error}


def _example(rank: int, world: int) -> dict:
    # The example, end to end: two outer iterations on 2 ranks == on 1 process, same tasks, in
    # both forms (the meta-gradient form uncompiled here: two cold compiles per rank are slow).
    example = _load_example("distributed_maml")
    results = {}
    for form in ("meta-adam", "meta-gradient"):
        kw = {"outer_iterations": 2, "meta_batch": 3, "hidden": 8, "dtype": torch.float64}
        kw.update(form=form, backend="eager")
        losses, trained = example.train(**kw)
        alone_losses, alone = example.train(rank=0, world_size=1, **kw)
        error = max(
            (a - b).abs().max().item()
            for a, b in zip(trained.parameters(), alone.parameters(), strict=True)
        )
        results[form] = (error, losses, alone_losses, [p.detach() for p in trained.parameters()])
    # The two forms compute the same MAML (Adam inner steps, lr 1e-2): same training.
    forms_error = max(
        (a - b).abs().max().item()
        for a, b in zip(results["meta-adam"][3], results["meta-gradient"][3], strict=True)
    )
    return {
        "example": {form: result[:3] for form, result in results.items()},
        "example_forms_error": forms_error,
    }


def _gloo_worker(rank: int, world: int) -> dict:
    optcompile.set_default_backend("eager")
    _init_gloo(rank, world)
    result = {
        **_data_parallel(rank, world),
        **_functional(rank, world),
        **_ddp(rank, world),
        **_example(rank, world),
    }
    dist.destroy_process_group()
    return result


@pytest.fixture(scope="module")
def gloo():
    """One spawned gloo run (2 ranks) serves every data-parallel and DDP test."""
    return values(run_ranks(_gloo_worker))


def test_meta_gradients_equal_one_process_over_all_tasks(gloo):
    for rank, result in enumerate(gloo):
        assert len(result["errors"]) == 2 * len(META_OPTIMIZERS)
        for case, error in result["errors"].items():
            assert error < 1e-10, f"rank {rank}, {case}: max |sync - one process| = {error}"


def test_hooks_fire_once_per_meta_parameter_per_outer_backward_never_in_inner_steps(gloo):
    for result in gloo:
        for case, (inner_calls, calls, buckets) in result["hooks"].items():
            assert inner_calls == 0, case
            assert calls == [1] * 4, case
            assert buckets >= 1
        assert any(b > 1 for _, _, b in result["hooks"].values())  # the tiny bucket cap split


def test_no_sync_accumulates_locally_then_sum_op_adds_the_ranks(gloo):
    for result in gloo:
        assert result["sum_calls"] == [2] * 4
        assert result["syncs"] == (0, 1)
        assert result["sum_error"] < 1e-10


def test_meta_gradients_computed_as_values_sync_like_an_outer_backward(gloo):
    for rank, result in enumerate(gloo):
        assert len(result["functional_errors"]) == 4
        for case, error in result["functional_errors"].items():
            assert error < 1e-10, f"rank {rank}, {case}: max |sync - one process| = {error}"
        for case, (calls, syncs) in result["functional_hooks"].items():
            assert calls == [1] * 4 and syncs == 1, case
        assert all(result["functional_inputs_unchanged"].values())


# --- DDP: the .module trap raises; the wrapper used through forward is exact ------------------


def test_meta_optimizer_on_ddp_module_raises(gloo):
    for result in gloo:
        assert result["trap"] is not None
        assert "DistributedDataParallel" in result["trap"]
        assert "sync_meta_gradients" in result["trap"]


def test_plain_ddp_through_forward_equals_one_process(gloo):
    for result in gloo:
        assert result["ddp_error"] < 1e-10


def test_example_distributed_maml_equals_one_process(gloo):
    for result in gloo:
        for form, (error, losses, alone) in result["example"].items():
            assert error < 1e-10, form
            assert losses == pytest.approx(alone, rel=1e-10, abs=0), form
        assert result["example_forms_error"] < 1e-10


# --- faults: one rank raising in its inner loop fails every rank, nothing hangs ----------------


def _fault_worker(rank: int, world: int) -> None:
    optcompile.set_default_backend("eager")
    _init_gloo(rank, world)
    net = _net()
    od.sync_meta_gradients(net)
    tasks = _tasks(4)
    with od.fail_together():
        losses = []
        for index in od.shard_tasks(4):
            if rank == 1:
                raise FloatingPointError(f"task {index} diverged in the inner loop")
            losses.append(_task_loss(net, "MetaAdam", tasks[index]))
        torch.stack(losses).mean().backward()


def test_a_rank_raising_in_the_inner_loop_fails_every_rank():
    # Without fail_together the other rank fails the same way, when the connection to the dead
    # rank drops or at the process group's timeout; with it, the message names the cause.
    results = run_ranks(_fault_worker, timeout=60)
    assert results[1]["error"] == "FloatingPointError"
    assert "diverged" in results[1]["message"]
    assert results[0]["error"] == "RuntimeError", results[0]
    assert "all-reduce of meta-gradients failed" in results[0]["message"]
    assert "rank 1 raised FloatingPointError: task 2 diverged" in results[0]["message"]


# --- TorchOpt's RPC API ------------------------------------------------------------------------


def _square_mean(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x**2).mean(dim=0) * scale


def _square_sum(x: torch.Tensor) -> torch.Tensor:
    return (x**2).sum(dim=0)


@od.parallelize(od.dim_partitioner(0), od.mean_reducer)
def _parallel_square_mean(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _square_mean(x, scale)


@od.parallelize(od.dim_partitioner(1, exclusive=True, keepdim=False), od.sum_reducer)
def _parallel_column_norms(x: torch.Tensor) -> torch.Tensor:
    return (x**2).sum()


@od.parallelize()  # batch partitioner, mean reducer
def _parallel_default(x: torch.Tensor) -> torch.Tensor:
    return (x**3).mean(dim=0)


# TorchOpt's distributed MAML (examples/distributed/few-shot/maml_omniglot.py), as written for
# torchopt: rank 0 sends an RRef of a clone of the network, each task's inner loop runs on a
# worker, and distributed autograd brings the meta-gradient back.
def _transpose_mean_reducer(results):
    losses, accs = tuple(zip(*results, strict=True))
    return torch.mean(torch.stack(losses)), sum(accs) / len(accs)


def _torchopt_inner_loop(net_rref, x_spt, y_spt, x_qry, y_qry, n_inner_iter):
    import optcompile as torchopt

    net = torchopt.module_clone(net_rref.to_here(), by="reference", detach_buffers=True)
    inner_opt = torchopt.MetaSGD(net, lr=1e-1)
    for _ in range(n_inner_iter):
        inner_opt.step(nn.functional.mse_loss(net(x_spt), y_spt))
    return nn.functional.mse_loss(net(x_qry), y_qry), 1.0


_parallel_torchopt_inner_loop = od.parallelize(
    partitioner=od.dim_partitioner(dim=0, exclusive=True, keepdim=False),
    reducer=_transpose_mean_reducer,
)(_torchopt_inner_loop)


def _torchopt_maml_error() -> float:
    import optcompile as torchopt
    import optcompile.distributed as todist

    net = _net()
    data = [torch.randn(4, 5, d, dtype=torch.float64) for d in (3, 2, 3, 2)]
    net_rref = todist.rpc.RRef(torchopt.module_clone(net, by="copy"))
    with todist.autograd.context() as context_id:
        loss, _ = _parallel_torchopt_inner_loop(net_rref, *data, 2)
        todist.autograd.backward(context_id, loss)
    distributed = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    local = [
        _torchopt_inner_loop(todist.rpc.RRef(net), *(d[i] for d in data), 2)[0] for i in range(4)
    ]
    torch.stack(local).mean().backward()
    pairs = zip(distributed, net.parameters(), strict=True)
    return max((a - p.grad).abs().max().item() for a, p in pairs)


@od.rank_zero_only
def _only_zero() -> int:
    return od.get_rank()


def _rpc_worker(rank: int, world: int) -> dict | None:
    import torch.distributed.rpc as rpc

    options = rpc.TensorPipeRpcBackendOptions(
        num_worker_threads=4, rpc_timeout=20, _transports=["uv"], _channels=["basic"]
    )

    @od.auto_init_rpc(rpc_backend_options=options)
    def main() -> dict | None:
        info = od.get_world_info()
        gated = _only_zero()
        if rank != 0:
            return {"info": tuple(info), "gated": gated}
        torch.manual_seed(0)
        x = torch.randn(8, 3, dtype=torch.float64)
        out: dict = {"info": tuple(info), "gated": gated}
        out["dim_mean"] = (_parallel_square_mean(x, 2.0) - _square_mean(x, 2.0)).abs().max().item()
        out["exclusive_sum"] = (_parallel_column_norms(x) - (x**2).sum()).abs().item()
        out["default"] = (_parallel_default(x) - (x**3).mean(dim=0)).abs().max().item()
        parts = od.remote_sync_call(_square_sum, args=(x,), partitioner=od.batch_partitioner)
        out["parts"] = [tuple(p.shape) for p in parts]
        out["sum_reducer"] = (
            (od.remote_sync_call(_square_sum, args=(x,), reducer="sum") - (x**2).sum(0))
            .abs()
            .max()
            .item()
        )
        futures = {
            "a": rpc.rpc_async(1, torch.add, args=(x, 1)),
            "b": [rpc.rpc_async(0, torch.neg, args=(x,))],
        }
        waited = od.tree_wait(futures)
        out["tree_wait"] = bool(torch.equal(waited["a"], x + 1) and torch.equal(waited["b"][0], -x))
        out["rref"] = bool(torch.equal(od.tree_to_here(od.tree_as_rref({"x": x}))["x"], x))
        for bad in (5, 7):  # a batch that two workers do not divide
            try:
                _parallel_square_mean(torch.ones(bad, 3), 1.0)
            except ValueError as error:
                out[f"bad_batch_{bad}"] = str(error)

        # distributed autograd: the graph crosses processes; .grad as a local backward gives
        w = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
        w_local = w.detach().clone().requires_grad_(True)
        with od.autograd.context() as ctx:
            remote = rpc.rpc_sync(1, _square_sum, args=(w,))
            loss = (remote * torch.arange(1.0, 4.0, dtype=torch.float64)).sum()
            loss = loss + _parallel_square_mean(w, 3.0).sum()
            od.autograd.backward(ctx, loss)
        local = (_square_sum(w_local) * torch.arange(1.0, 4.0, dtype=torch.float64)).sum()
        (local + _square_mean(w_local, 3.0).sum()).backward()
        out["dist_backward"] = (w.grad - w_local.grad).abs().max().item()
        with od.autograd.context() as ctx:
            (g,) = od.autograd.grad(ctx, rpc.rpc_sync(1, _square_sum, args=(w,)).sum(), w)
        out["dist_grad"] = (g - 2 * w.detach()).abs().max().item()
        out["torchopt_maml"] = _torchopt_maml_error()
        # Last, the driver fails: the other worker, waiting in the shutdown handshake, must
        # still finish (the RPC default would wait for the dead driver forever).
        results.update(out)
        raise FloatingPointError("the driver diverged")

    results: dict = {}
    try:
        return main()
    except FloatingPointError as error:
        return {**results, "raised": str(error)}


@pytest.fixture(scope="module")
def rpc_results():
    return values(run_ranks(_rpc_worker))


def test_a_failing_rpc_driver_does_not_leave_the_workers_hanging(rpc_results):
    assert rpc_results[0]["raised"] == "the driver diverged"
    assert "raised" not in rpc_results[1]  # it returned normally from auto_init_rpc


def test_world_info_and_rank_gates_under_rpc(rpc_results):
    for rank, result in enumerate(rpc_results):
        assert result["info"] == (rank, 2, rank, 2)
        assert result["gated"] == (0 if rank == 0 else None)


def test_parallelize_with_partitioners_and_reducers_equals_sequential(rpc_results):
    out = rpc_results[0]
    assert out["dim_mean"] < 1e-12
    assert out["exclusive_sum"] < 1e-12
    assert out["default"] < 1e-12
    assert out["sum_reducer"] < 1e-12
    assert out["parts"] == [(3,), (3,)]
    assert out["tree_wait"] and out["rref"]


def test_parallelize_rejects_a_batch_the_workers_do_not_divide(rpc_results):
    for bad in (5, 7):
        assert "does not split evenly over 2 workers" in rpc_results[0][f"bad_batch_{bad}"]


def test_torchopt_distributed_maml_runs_unchanged_and_equals_the_local_result(rpc_results):
    assert rpc_results[0]["torchopt_maml"] < 1e-12


def test_distributed_autograd_fills_grad_like_a_local_backward(rpc_results):
    assert rpc_results[0]["dist_backward"] < 1e-12
    assert rpc_results[0]["dist_grad"] < 1e-12


# --- single-process checks: sharding and bad input ---------------------------------------------


@pytest.mark.parametrize("num_tasks", [2, 5, 7, 8])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_task_once_and_scale_to_the_global_mean(num_tasks, world):
    if num_tasks < world:
        return
    shards = [od.shard_tasks(num_tasks, rank=r, world_size=world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(num_tasks))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    losses = torch.arange(1.0, num_tasks + 1, dtype=torch.float64)
    rank_mean = sum(s.mean_loss([losses[i] for i in s]) for s in shards) / world
    assert torch.allclose(rank_mean, losses.mean(), rtol=0, atol=1e-14)


BAD_INPUT = [
    (lambda: od.shard_tasks(1, rank=0, world_size=2), ValueError, r"num_tasks=1 is smaller"),
    (lambda: od.shard_tasks(4, rank=2, world_size=2), ValueError, r"rank=2 is not in a world"),
    (lambda: od.sync_meta_gradients(_net(), op="max"), ValueError, r"op must be one of"),
    (lambda: od.sync_meta_gradients(_net(), bucket_mb=0), ValueError, r"bucket_mb must be"),
    (lambda: od.sync_meta_gradients(_net()), RuntimeError, r"init_process_group"),
    (lambda: od.sync_meta_gradients(torch.ones(2)), TypeError, r"single tensor"),
    (
        lambda: od.sync_meta_gradients([torch.ones(2)]),
        ValueError,
        r"module_or_params\[0\] is not a leaf tensor that requires grad",
    ),
    (
        lambda: od.dim_partitioner(0, workers=[0, 1])(torch.ones(5, 2)),
        ValueError,
        r"a batch of 5 along dim=0 does not split evenly over 2 workers",
    ),
    (
        lambda: od.dim_partitioner(0, workers=[0, 1])(torch.ones(4, 2), torch.ones(3)),
        ValueError,
        r"disagree on the size of dim=0",
    ),
    (lambda: od.TensorDimensionPartitioner(0), ValueError, r"keepdim=False needs exclusive"),
    (
        lambda: od.remote_sync_call(_square_sum, args=(torch.ones(2),), reducer="max"),
        ValueError,
        r"unknown reducer 'max'",
    ),
    (lambda: od.parallelize(reducer=3), TypeError, r"reducer must be a callable"),
    (lambda: od.on_rank(-1), ValueError, r"non-negative"),
    (lambda: od.barrier(), RuntimeError, r"init_process_group or RPC"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_INPUT)
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_partitioners_split_as_documented():
    x = torch.arange(12.0).reshape(6, 2)
    parts = od.dim_partitioner(0, workers=[0, 1])(x, 7)
    assert [(w, a[0].tolist(), a[1]) for w, a, _ in parts] == [
        (0, x[:3].tolist(), 7),
        (1, x[3:].tolist(), 7),
    ]
    parts = od.dim_partitioner(-1, exclusive=True, keepdim=False, workers=[0, 1])(x=x)
    assert [(w, kw["x"].tolist()) for w, _, kw in parts] == [
        (0, x[:, 0].tolist()),
        (1, x[:, 1].tolist()),
    ]
    assert od.mean_reducer([torch.tensor(1.0), torch.tensor(3.0)]) == 2.0
    assert od.sum_reducer([torch.tensor(1.0), torch.tensor(3.0)]) == 4.0


def test_reachable_under_torchopt_names():
    import optcompile as torchopt

    assert torchopt.distributed.autograd.is_available()
    assert torchopt.pytree.tree_as_rref is od.tree_as_rref
    for name in (
        "auto_init_rpc", "get_world_info", "get_world_rank", "get_rank", "get_world_size",
        "get_local_rank", "get_local_world_size", "barrier", "on_rank", "not_on_rank",
        "rank_zero_only", "rank_non_zero_only", "TensorDimensionPartitioner", "dim_partitioner",
        "batch_partitioner", "mean_reducer", "sum_reducer", "remote_async_call",
        "remote_sync_call", "parallelize", "parallelize_async", "parallelize_sync", "is_available",
    ):  # fmt: skip
        assert hasattr(torchopt.distributed, name), name
    for name in ("context", "backward", "grad", "get_gradients", "is_available"):
        assert hasattr(torchopt.distributed.autograd, name), name


@pytest.fixture
def world_of_one():
    """A 1-rank gloo process group in this process (no spawn), torn down afterwards."""
    store = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=PG_TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=PG_TIMEOUT)
    yield
    dist.destroy_process_group()


class _FailInBackward(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise FloatingPointError("backward failed half-way")


def test_a_backward_that_died_half_way_is_not_silently_continued(world_of_one):
    net = _net()
    sync = od.sync_meta_gradients(net, bucket_mb=1e-6)  # one bucket per parameter
    x = torch.ones(2, 3, dtype=torch.float64)
    with pytest.raises(FloatingPointError):
        net[2](_FailInBackward.apply(net[1](net[0](x)))).sum().backward()
    assert sync.hook_calls == [0, 0, 1, 1]  # the last layer's buckets went out
    with pytest.raises(RuntimeError, match="previous one's meta-gradient all-reduces"):
        net(x).sum().backward()


def test_sync_backward_rejects_gradients_that_do_not_match_the_meta_parameters(world_of_one):
    net = _net()
    sync = od.sync_meta_gradients(net)
    grads = {k: torch.zeros_like(v) for k, v in net.named_parameters()}
    with pytest.raises(ValueError, match=r"missing \['2.bias'\], unknown \['2.b'\]"):
        sync.backward({**{k: v for k, v in grads.items() if k != "2.bias"}, "2.b": grads["2.bias"]})
    with pytest.raises(ValueError, match=r"gradients\['0.weight'\] has shape \(3, 5\)"):
        sync.backward({**grads, "0.weight": torch.zeros(3, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"float32"):
        sync.backward([g.float() for g in grads.values()])
    with pytest.raises(ValueError, match=r"gradients has 3 tensors; there are 4"):
        sync.backward(list(grads.values())[:3])
    for not_gradients in (torch.zeros(3), "abcd"):
        with pytest.raises(TypeError, match=r"a mapping of names to tensors or a sequence"):
            sync.backward(not_gradients)
    with pytest.raises(TypeError, match=r"gradients\['0.bias'\] is a float"):
        sync.backward([grads["0.weight"], 0.0, *list(grads.values())[2:]])
    assert sync.hook_calls == [0] * 4 and all(p.grad is None for p in net.parameters())
    by_tensors = od.sync_meta_gradients(list(net.parameters()))
    with pytest.raises(TypeError, match=r"was given tensors, not a module"):
        by_tensors.backward(grads)
    shard = od.shard_tasks(2)
    with pytest.raises(ValueError, match=r"gradients has 1 items; this shard has 2 tasks"):
        shard.mean_gradient([grads])
    with pytest.raises(ValueError, match=r"differ in structure"):
        shard.mean_gradient([grads, {"0.weight": grads["0.weight"]}])


def test_world_of_one_sync_is_the_local_gradient(world_of_one):
    net, reference = _net(), _net()
    sync = od.sync_meta_gradients(net, bucket_mb=1e-4)
    task = _tasks(1)[0]
    _task_loss(net, "MetaAdam", task).backward()
    _task_loss(reference, "MetaAdam", task).backward()
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert sync.hook_calls == [1] * 4 and sync.syncs == 1
    # Wrapped after a meta-optimizer was built on it (the guard scanned it unwrapped then).
    ddp = nn.parallel.DistributedDataParallel(reference)
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        optcompile.MetaSGD(ddp.module, lr=0.1)
    optcompile.MetaSGD(ddp, lr=0.1)  # the wrapper itself is the supported DDP set-up
