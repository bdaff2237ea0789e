"""The long-unroll benchmark problem: K inner Adam steps on a ~1M-parameter MLP, then backward.

One outer iteration: K functional Adam steps (lr 1e-3; ``torch.func.grad`` of an MSE loss on a
32-sample batch, ``tx.update(..., inplace=False)``, ``apply_updates(..., inplace=False)``) of an
MLP 128-H-H-10 with tanh, then an MSE loss on 32 validation samples and its backward to the
initial weights. Modes: ``full`` (every step on the graph), ``sqrt`` (``checkpoint_every="sqrt"``),
``truncate`` (``truncate=ceil(sqrt(K))``), ``no_grad`` (graph-free evaluation, no backward),
``torchopt-func`` (the same loop with TorchOpt's ``adam``) and ``torchopt-meta`` /
``optcompile-meta`` (``MetaAdam.step`` K times on the module).

Runnable as a worker, ``python bench/unroll_problem.py MODE K HIDDEN``: prints, as JSON, the peak
resident memory growth of one iteration above the memory held between iterations (MiB), in a
fresh process per configuration, with ``MALLOC_MMAP_THRESHOLD_=65536`` set by the caller so that
resident memory follows live tensor bytes (see ``maml_problem.py``).
"""

from __future__ import annotations

import gc
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from maml_problem import make_data, make_net  # the MAML bench's MLP and data
from torch.func import functional_call

HIDDEN_1M = 930  # 128-930-930-10: 994,870 parameters
BACKEND = "eager"


def _functional(net: nn.Module, lib: object) -> tuple[Callable, Callable, tuple]:
    names = [n for n, _ in net.named_parameters()]
    x, y, xv, yv = make_data()

    def loss(params: tuple, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, dict(zip(names, params, strict=True)), (inputs,))
        return ((out - targets) ** 2).mean()

    ours = lib.__name__ == "optcompile"  # type: ignore[attr-defined]
    tx = lib.adam(lr=1e-3, **({"backend": BACKEND} if ours else {}))  # type: ignore[attr-defined]

    def step_fn(params: tuple, state: object, batch: int) -> tuple:
        grads = torch.func.grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return lib.apply_updates(params, updates, inplace=False), state  # type: ignore

    return step_fn, lambda p: loss(p, xv, yv), tx


def iteration(mode: str, steps: int, hidden: int) -> Callable[[], None]:
    """One outer iteration of ``mode`` (K = ``steps``) as a closure, set up once."""
    net = make_net(hidden)
    weights = tuple(net.parameters())
    if mode in ("optcompile-meta", "torchopt-meta"):
        return _meta_iteration(mode, net, steps)
    import optcompile

    if mode == "torchopt-func":
        import torchopt

        step_fn, outer, tx = _functional(net, torchopt)

        def run_torchopt() -> None:
            params = weights
            state = tx.init(params)
            for t in range(steps):
                params, state = step_fn(params, state, t)
            outer(params).backward()

        return run_torchopt
    step_fn, outer, tx = _functional(net, optcompile)
    options = {
        "full": {},
        "sqrt": {"checkpoint_every": "sqrt"},
        "truncate": {"truncate": math.ceil(math.sqrt(steps))},
        "no_grad": {},
    }[mode]

    def run() -> None:
        if mode == "no_grad":
            with torch.no_grad():
                optcompile.unroll(step_fn, weights, tx.init(weights), steps)
            return
        params, _ = optcompile.unroll(step_fn, weights, tx.init(weights), steps, **options)
        outer(params).backward()

    return run


def _meta_iteration(mode: str, net: nn.Module, steps: int) -> Callable[[], None]:
    lib = __import__("optcompile" if mode == "optcompile-meta" else "torchopt")
    kwargs = {"backend": BACKEND} if mode == "optcompile-meta" else {}
    x, y, xv, yv = make_data()
    optim = lib.MetaAdam(net, lr=1e-3, **kwargs)
    net_state = lib.extract_state_dict(net, by="reference")
    optim_state = lib.extract_state_dict(optim, by="reference")

    def run() -> None:
        for _ in range(steps):
            optim.step(((net(x) - y) ** 2).mean())
        ((net(xv) - yv) ** 2).mean().backward()
        lib.recover_state_dict(net, net_state)
        lib.recover_state_dict(optim, optim_state)

    return run


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    mode, steps, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    run = iteration(mode, steps, hidden)
    run()  # warm-up: caches, allocator
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mib("VmRSS")
    run()
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak_growth_mib": peak - baseline, "baseline_mib": baseline}))


if __name__ == "__main__":
    main()
