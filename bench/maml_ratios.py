"""Time ratios of the MAML contenders: ``python bench/maml_ratios.py HIDDEN ROUNDS A,B,... [RUNS]``.

The same problem and implementations as ``bench/test_maml.py`` (``maml_problem.py``), without
the memory workers: each contender is warmed up (compiled) twice, then all run round-robin for
ROUNDS rounds on one thread; the medians of thread CPU time and wall time are printed with
their ratios to the first contender, and the median count of minor page faults per iteration.
With RUNS > 1 it does that RUNS times, each in a fresh process (a process's history changes its
speed) and with the contenders built in a rotated order, then prints each contender's range
over the runs of its time and of the ratios ``reference / contender`` for the references in the
list (TorchOpt, higher, ``torch.compile`` Adam), each ratio taken within one run: the figures
the docs quote. Compare ratios only.
With both ``optcompile-meta-gradient`` and ``optcompile-meta-gradient-sgd`` in the list it also
prints Adam's share of the compiled iteration, ``1 - time(SGD) / time(Adam)``: the two differ
only in the update rule, so the SGD form is the floor of any Adam in that form, and
``TorchOpt / optcompile-meta-gradient-sgd`` the largest ratio an Adam could reach there.

glibc's allocator is first told to keep freed memory in the process (``mallopt``, as
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` would): by default it returns the memory
that an eager MAML iteration frees, so that the next iteration faults its pages in again
(thousands of faults per iteration for TorchOpt at ~1M parameters), and how much it returns
depends on what else the process ran: the eager contenders' times then moved with the set of
contenders sharing the process (``docs/benchmarks.md``, section 2). Keeping the memory takes
that cost away from every contender, which favours the eager ones (the compiled graphs barely
allocate). ``BENCH_MALLOC=default`` keeps glibc's defaults.
Example: ``python bench/maml_ratios.py 256 31 optcompile-whole-step,torchopt-0.7.3``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
from maml_problem import IMPLEMENTATIONS, make_net, parameter_count

REFERENCES = ("torchopt-0.7.3", "higher-0.2.1", "torch.compile-plain-adam")
ADAM, SGD = "optcompile-meta-gradient", "optcompile-meta-gradient-sgd"
MEDIANS_TAG = "# medians-ms "


def main() -> None:
    hidden, rounds, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    if runs > 1:
        _ranges_over_runs(hidden, rounds, names, runs)
    else:
        _one_run(int(hidden), int(rounds), names)


def _ranges_over_runs(hidden: str, rounds: str, names: list[str], runs: int) -> None:
    """Run the bench ``runs`` times in fresh processes; print the ranges over the runs.

    Run ``r`` builds the contenders in the list's order rotated by ``r``: where a contender
    is built changes its speed (two builds of the same whole-step form measured a few per cent
    apart, the later one faster, in either order), so rotating spreads that over the runs and
    into the ranges instead of favouring the same contender every time.
    """
    medians = []
    for run in range(runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        print(f"# run {run + 1} of {runs}: {','.join(order)}", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, hidden, rounds, ",".join(order)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(out, end="", flush=True)
        tagged = [line for line in out.splitlines() if line.startswith(MEDIANS_TAG)]
        medians.append(json.loads(tagged[-1][len(MEDIANS_TAG) :]))
    print(f"ranges over {runs} runs (ms: median thread CPU time per iteration; ratios per run)")
    for name in names:
        times = [run[name] for run in medians]
        line = f"{name:40s} {min(times):8.2f}-{max(times):.2f} ms"
        for reference in REFERENCES:
            if reference in names and reference != name:
                ratios = [run[reference] / run[name] for run in medians]
                line += f"  {reference} / it {min(ratios):.2f}-{max(ratios):.2f}x"
        print(line)
    if ADAM in names and SGD in names:
        shares = [_adam_share(run) for run in medians]
        print(f"Adam's share of the compiled iteration: {min(shares):.1%}-{max(shares):.1%}")


def _one_run(hidden: int, rounds: int, names: list[str]) -> None:
    warnings.simplefilter("ignore")
    allocator = "glibc defaults" if os.environ.get("BENCH_MALLOC") == "default" else _keep_freed()
    torch.set_num_threads(1)
    iterations = {name: IMPLEMENTATIONS[name](make_net(hidden)) for name in names}
    for name, iteration in iterations.items():
        start = time.perf_counter()
        iteration()
        iteration()
        print(f"# {name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, iteration in iterations.items():
            start_faults = _page_faults()
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            iteration()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
            faults[name].append(_page_faults() - start_faults)
    cpu_ms = {name: 1e3 * statistics.median(cpu[name]) for name in names}
    wall_ms = {name: 1e3 * statistics.median(wall[name]) for name in names}
    ref_cpu, ref_wall = cpu_ms[names[0]], wall_ms[names[0]]
    print(f"{parameter_count(hidden)} parameters, {rounds} rounds, one thread, {allocator}")
    for name in names:
        c, w, f = cpu_ms[name], wall_ms[name], statistics.median(faults[name])
        print(f"{name:26s} cpu {c:8.2f} ms  wall {w:8.2f} ms  "
              f"cpu x{c / ref_cpu:5.2f}  wall x{w / ref_wall:5.2f}  "
              f"page faults {f:6.0f}", flush=True)  # fmt: skip
    if ADAM in cpu_ms and SGD in cpu_ms:
        print(f"Adam's share of the compiled iteration: {_adam_share(cpu_ms):.1%}")
    print(MEDIANS_TAG + json.dumps(cpu_ms), flush=True)


def _adam_share(medians_ms: dict[str, float]) -> float:
    """The fraction of the compiled meta-gradient's time that Adam's update adds over SGD's."""
    return 1 - medians_ms[SGD] / medians_ms[ADAM]


def _keep_freed() -> str:
    """Tell glibc's malloc never to hand freed memory back to the OS; say what was done."""
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "allocator unchanged (no glibc)"
    if libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30):
        return "glibc keeping freed memory"
    return "allocator unchanged (mallopt refused)"


def _page_faults() -> int:
    """Minor page faults of this thread so far: memory the allocator got fresh from the OS.

    An eager contender's time depends on how much of its memory glibc hands back to the OS
    between iterations (each new page is then a fault), which depends on what else the process
    has run: the count shows when that, rather than the contender's own work, moves a ratio.
    """
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


if __name__ == "__main__":
    main()
