"""Long unrolls: peak memory and time vs K for full, checkpointed and truncated unrolls.

K inner functional Adam steps (optcompile ``adam``, eager backend) of a ~1M-parameter MLP, then
the outer backward (``unroll_problem.py``). Time: the modes run round-robin in one process
(round r of each before round r+1 of any); medians of ``time.thread_time()`` (CPU time of this
thread: robust to neighbours on a shared host) and of wall time. Memory: peak resident growth
of one iteration, a fresh worker process per configuration.

Targets at K = 100: ``checkpoint_every="sqrt"`` peak memory at most 0.25x the full unroll's,
time at most 1.5x; the full unroll's peak memory no more than TorchOpt's at the same K.
Writes ``docs/unroll_memory.png`` (memory and time vs K) and ``bench/results/unroll.json``.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _report import add_row
from unroll_problem import HIDDEN_1M, iteration, make_net

HERE = Path(__file__).parent
PLOT = HERE.parent / "docs" / "unroll_memory.png"
K_VALUES = (10, 30, 100)
TIMED = ("full", "sqrt", "truncate")
ROUNDS = 3


def _peak_memory(mode: str, steps: int, hidden: int) -> float:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, str(HERE / "unroll_problem.py"), mode, str(steps), str(hidden)],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]


def _times(steps: int, hidden: int) -> dict[str, tuple[float, float]]:
    """Median (thread seconds, wall seconds) per mode, modes interleaved round-robin."""
    runs = {mode: iteration(mode, steps, hidden) for mode in TIMED}
    for run in runs.values():
        run()  # warm-up outside the timing
    cpu: dict[str, list[float]] = {mode: [] for mode in TIMED}
    wall: dict[str, list[float]] = {mode: [] for mode in TIMED}
    for _ in range(ROUNDS):
        for mode, run in runs.items():
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            run()
            cpu[mode].append(time.thread_time() - start_cpu)
            wall[mode].append(time.perf_counter() - start_wall)
    return {m: (statistics.median(cpu[m]), statistics.median(wall[m])) for m in TIMED}


def test_memory_and_time_vs_k():
    params = sum(p.numel() for p in make_net(HIDDEN_1M).parameters())
    results: dict[int, dict[str, dict[str, float]]] = {}
    for steps in K_VALUES:
        times = _times(steps, HIDDEN_1M)
        results[steps] = {}
        for mode in (*TIMED, "no_grad"):
            row = {"peak_growth_mib": _peak_memory(mode, steps, HIDDEN_1M)}
            if mode in times:
                row["thread_s"], row["wall_s"] = times[mode]
            results[steps][mode] = row
            add_row("unroll", mode=mode, K=steps, params=params, **row)
    _plot(results)
    full, sqrt = results[100]["full"], results[100]["sqrt"]
    memory_ratio = sqrt["peak_growth_mib"] / full["peak_growth_mib"]
    time_ratio = sqrt["thread_s"] / full["thread_s"]
    print(f"\nK=100, sqrt vs full: memory {memory_ratio:.3f}x, thread time {time_ratio:.3f}x, "
          f"wall {sqrt['wall_s'] / full['wall_s']:.3f}x")  # fmt: skip
    assert memory_ratio <= 0.25
    assert time_ratio <= 1.5


def test_full_unroll_memory_vs_torchopt():
    pytest.importorskip("torchopt")
    steps = 100
    peaks = {
        mode: _peak_memory(mode, steps, HIDDEN_1M)
        for mode in ("full", "torchopt-func", "optcompile-meta", "torchopt-meta")
    }
    for mode, peak in peaks.items():
        add_row("unroll_vs_torchopt", mode=mode, K=steps, peak_growth_mib=peak)
    print(f"\nK=100 peak growth (MiB): {peaks}")
    assert peaks["full"] <= peaks["torchopt-func"]
    assert peaks["optcompile-meta"] <= peaks["torchopt-meta"]


def _plot(results: dict[int, dict[str, dict[str, float]]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = {
        "full": "full unroll",
        "sqrt": 'checkpoint_every="sqrt"',
        "truncate": "truncate=ceil(sqrt(K))",
        "no_grad": "torch.no_grad() (evaluation)",
    }
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 4))
    ks = sorted(results)
    for mode, label in labels.items():
        mem_ax.plot(ks, [results[k][mode]["peak_growth_mib"] for k in ks], marker="o", label=label)
        if mode in TIMED:
            time_ax.plot(ks, [results[k][mode]["thread_s"] for k in ks], marker="o", label=label)
    mem_ax.set(xlabel="inner steps K", ylabel="peak memory growth (MiB)", title="Peak memory")
    time_ax.set(xlabel="inner steps K", ylabel="seconds (CPU, 1 thread)", title="Time")
    for ax in (mem_ax, time_ax):
        ax.grid(alpha=0.3)
    mem_ax.legend()
    fig.suptitle("K inner Adam steps + outer backward, 1M-parameter MLP (CPU)")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)
