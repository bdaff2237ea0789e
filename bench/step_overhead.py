"""Per-step overhead of each per-step path: ``python bench/step_overhead.py HIDDEN ROUNDS``.

The MAML problem of ``maml_problem.py`` on a small net (HIDDEN=2: 294 parameters, where the
optimizer's arithmetic is negligible and only its per-step cost remains). Every contender and
``plain-sgd`` (``p - lr * g``, no optimizer state: the floor) run round-robin on one thread;
the overhead of a contender is ``(median iteration - median plain-sgd) / K`` in thread CPU
time, printed with its ratio to ``torch.compile`` of a hand-written Adam. Run it several times
for ranges.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch
from maml_problem import IMPLEMENTATIONS, INNER_STEPS, available, make_net, parameter_count

CONTENDERS = (
    "torch.compile-plain-adam",
    "optcompile-native",
    "optcompile-inductor",
    "optcompile-auto",
    "optcompile-eager",
    "torchopt-0.7.3",
)


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    hidden, rounds = int(sys.argv[1]), int(sys.argv[2])
    names = ["plain-sgd", *(n for n in CONTENDERS if available(n))]
    iterations = {name: IMPLEMENTATIONS[name](make_net(hidden)) for name in names}
    for iteration in iterations.values():
        for _ in range(3):
            iteration()  # compile and warm up outside the timing
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, iteration in iterations.items():
            start = time.thread_time()
            iteration()
            cpu[name].append(time.thread_time() - start)
    floor = statistics.median(cpu["plain-sgd"])
    overhead = {n: (statistics.median(cpu[n]) - floor) / INNER_STEPS for n in names[1:]}
    reference = overhead["torch.compile-plain-adam"]
    print(f"{parameter_count(hidden)} parameters, K={INNER_STEPS}, {rounds} rounds, one thread")
    print(f"plain-sgd iteration {floor * 1e3:.2f} ms")
    for name, value in overhead.items():
        print(f"{name:26s} {value * 1e6:7.0f} us per step over plain-sgd   "
              f"x{value / reference:5.2f} of torch.compile Adam's", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
