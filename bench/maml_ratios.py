"""Time ratios of the MAML contenders: ``python bench/maml_ratios.py HIDDEN ROUNDS A,B,...``.

The same problem and implementations as ``bench/test_maml.py`` (``maml_problem.py``), without
the memory workers: each contender is warmed up (compiled) twice, then all run round-robin for
ROUNDS rounds on one thread; the medians of thread CPU time and wall time are printed with
their ratios to the first contender. Run it several times for ranges; compare ratios only.
Example: ``python bench/maml_ratios.py 256 31 optcompile-whole-step,torchopt-0.7.3``.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch
from maml_problem import IMPLEMENTATIONS, make_net, parameter_count


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    hidden, rounds, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    iterations = {name: IMPLEMENTATIONS[name](make_net(hidden)) for name in names}
    for name, iteration in iterations.items():
        start = time.perf_counter()
        iteration()
        iteration()
        print(f"# {name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, iteration in iterations.items():
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            iteration()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    ref_cpu, ref_wall = statistics.median(cpu[names[0]]), statistics.median(wall[names[0]])
    print(f"{parameter_count(hidden)} parameters, {rounds} rounds, one thread")
    for name in names:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:26s} cpu {c * 1e3:8.2f} ms  wall {w * 1e3:8.2f} ms  "
              f"cpu x{c / ref_cpu:5.2f}  wall x{w / ref_wall:5.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
