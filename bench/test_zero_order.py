"""Zero-order gradients: one antithetic estimate of 1000 samples, optcompile against TorchOpt.

The loss is an MLP's (4 -> hidden -> 1, tanh; its 4 parameter tensors in a tuple), the estimate
is ``forward + backward`` of ``zero_order(Normal(0, 1), 'antithetic', num_samples=1000,
sigma=0.01)``. TorchOpt 0.7.3 evaluates the 2000 perturbed losses one by one in Python;
optcompile evaluates them with one ``vmap`` call (the whole estimate fits one chunk).
Contenders run interleaved, round-robin, on one thread; medians of thread and wall time.

Two sizes. ``small`` (hidden 16, batch 16, 97 parameters) is the issue's target: evaluating the
loss costs less than Python's overhead per sample, which batching removes; at least 10x is
asserted. ``medium`` (hidden 32, batch 64, 193 parameters) is compute-bound on one CPU thread
(2000 x 64 x 32 tanh alone take about 10 ms), so batching saves less; it is reported only.

Run: ``python -m pytest bench/test_zero_order.py -q -s``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from _report import add_row

import optcompile

ROUNDS = 15
SETTINGS = {"method": "antithetic", "num_samples": 1000, "sigma": 0.01}


def _mlp_loss(params, x, y):
    w1, b1, w2, b2 = params
    return (torch.tanh(x @ w1 + b1) @ w2 + b2 - y).pow(2).mean()


SIZES = {"small": (16, 16), "medium": (32, 64)}  # (hidden, batch)


def _problem(hidden, batch):
    gen = torch.Generator().manual_seed(0)
    params = (
        torch.randn(4, hidden, generator=gen) / 2,
        torch.zeros(hidden),
        torch.randn(hidden, 1, generator=gen) / hidden**0.5,
        torch.zeros(1),
    )
    x = torch.randn(batch, 4, generator=gen)
    y = torch.sin(x.sum(1, keepdim=True))
    return tuple(p.requires_grad_() for p in params), x, y


def _estimator(zero_order, size):
    loss = zero_order(torch.distributions.Normal(0.0, 1.0), argnums=0, **SETTINGS)(_mlp_loss)
    params, x, y = _problem(*SIZES[size])

    def estimate():
        return torch.autograd.grad(loss(params, x, y), params)

    return estimate


@pytest.mark.parametrize("size", SIZES)
def test_zero_order_antithetic_1000_samples(size):
    torchopt = pytest.importorskip("torchopt")
    contenders = {
        "optcompile": _estimator(optcompile.diff.zero_order.zero_order, size),
        "torchopt-0.7.3": _estimator(torchopt.diff.zero_order.zero_order, size),
    }
    times = {name: ([], []) for name in contenders}
    for estimate in contenders.values():
        estimate()  # warm-up
    for _ in range(ROUNDS):
        for name, estimate in contenders.items():
            cpu, wall = time.thread_time(), time.perf_counter()
            estimate()
            times[name][0].append(time.thread_time() - cpu)
            times[name][1].append(time.perf_counter() - wall)
    medians = {n: (statistics.median(c), statistics.median(w)) for n, (c, w) in times.items()}
    for name, (cpu, wall) in medians.items():
        add_row("zero_order", size=size, implementation=name, cpu_ms=cpu * 1e3, wall_ms=wall * 1e3)
    ours, theirs = medians["optcompile"], medians["torchopt-0.7.3"]
    speedup_cpu, speedup_wall = theirs[0] / ours[0], theirs[1] / ours[1]
    add_row("zero_order", size=size, implementation="speed-up (x)", cpu_ms=speedup_cpu,
            wall_ms=speedup_wall)  # fmt: skip
    print(f"\nzero_order antithetic x1000, {size}: {speedup_cpu:.1f}x (thread time), "
          f"{speedup_wall:.1f}x (wall)")  # fmt: skip
    if size == "small":
        assert speedup_cpu >= 10, medians  # the target
