"""MAML vmapped over 16 tasks against a Python loop over the same tasks (issue 9's target).

The problem is ``examples/maml_vmap.py`` (sine regression, 1-40-40-1 MLP, 3 inner steps of the
functional ``adam``, meta-gradient of the mean query loss). Both contenders run interleaved,
round-robin, on one thread; medians of thread CPU time and wall time. Their meta-gradients are
compared first (float32: equal to rounding). Target: vmap at least 2x faster than the loop.

Run: ``python -m pytest bench/test_vmap.py -q -s``.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

import torch
from _report import add_row

ROUNDS = 30
_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "maml_vmap.py"


def _example():
    spec = importlib.util.spec_from_file_location("maml_vmap", _EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_maml_vmap_over_tasks_against_a_loop():
    example = _example()
    net = example.make_net()
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    data = example.sample_tasks()
    contenders = {"vmap": example.meta_gradient_vmap, "loop": example.meta_gradient_loop}
    results = {name: fn(net, params, data) for name, fn in contenders.items()}
    for a, b in zip(results["vmap"], results["loop"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    times = {name: ([], []) for name in contenders}
    for _ in range(ROUNDS):
        for name, fn in contenders.items():
            cpu, wall = time.thread_time(), time.perf_counter()
            fn(net, params, data)
            times[name][0].append(time.thread_time() - cpu)
            times[name][1].append(time.perf_counter() - wall)
    medians = {n: (statistics.median(c), statistics.median(w)) for n, (c, w) in times.items()}
    for name, (cpu, wall) in medians.items():
        add_row("vmap", tasks=example.TASKS, implementation=name, cpu_ms=cpu * 1e3,
                wall_ms=wall * 1e3)  # fmt: skip
    speedup_cpu = medians["loop"][0] / medians["vmap"][0]
    speedup_wall = medians["loop"][1] / medians["vmap"][1]
    print(f"\nMAML x{example.TASKS} tasks: vmap {speedup_cpu:.2f}x faster than the loop (thread "
          f"time), {speedup_wall:.2f}x (wall)")  # fmt: skip
    assert speedup_cpu >= 2.0, medians
