"""A MAML outer iteration (K=5 inner Adam steps + outer backward) at ~100k/1M/5M params.

Time: every available implementation runs round-robin in one process (round r of each before
round r+1 of any), at least 30 rounds, so a noisy neighbour slows all of them alike; each row
reports the medians of thread CPU time and of wall time and their ratios to
``optcompile-whole-step`` (``@optcompile`` on the functional inner step) in the same run.
pytest-benchmark records its rounds. Memory: peak growth of one iteration in a fresh worker
process per configuration (``maml_problem.py``). Compare ratios across runs, never absolute
times; run the file several times for ranges (``python -m pytest bench/test_maml.py -q -s``).
This file keeps glibc's allocator defaults, under which the eager contenders' times at ~1M
depend on what else the process ran (``maml_ratios.py`` explains); the ratios in the README and
``docs/benchmarks.md`` come from ``maml_ratios.py``, which keeps freed memory for every contender.
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
from maml_problem import HIDDEN_FOR_SIZE, IMPLEMENTATIONS, available, make_net, parameter_count

HERE = Path(__file__).parent
ROUNDS = {"100k": 31, "1M": 31, "5M": 30}
OURS = "optcompile-whole-step"


def _peak_memory(impl: str, hidden: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, str(HERE / "maml_problem.py"), impl, str(hidden)],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", HIDDEN_FOR_SIZE)
def test_maml_outer_iteration(benchmark, size):
    hidden = HIDDEN_FOR_SIZE[size]
    names = [name for name in IMPLEMENTATIONS if available(name)]
    iterations = {name: IMPLEMENTATIONS[name](make_net(hidden)) for name in names}
    for iteration in iterations.values():
        iteration()  # compile and warm up outside the timing
    cpu: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(ROUNDS[size]):
        for name in names:
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            iterations[name]()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    benchmark.pedantic(iterations[OURS], rounds=3, iterations=1)
    ours_cpu, ours_wall = statistics.median(cpu[OURS]), statistics.median(wall[OURS])
    params = parameter_count(hidden)
    for name in names:
        median_cpu, median_wall = statistics.median(cpu[name]), statistics.median(wall[name])
        memory = _peak_memory(name, hidden)
        add_row(
            "maml",
            implementation=name,
            params=params,
            seconds_per_iteration=median_cpu,
            wall_seconds=median_wall,
            cpu_time_vs_whole_step=median_cpu / ours_cpu,
            wall_time_vs_whole_step=median_wall / ours_wall,
            peak_growth_mib=memory["peak_growth_mib"],
            peak_over_param_bytes=memory["peak_growth_mib"] * 2**20 / (4 * params),
        )
