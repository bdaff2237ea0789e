"""A MAML outer iteration (K=5 inner MetaAdam steps + outer backward) at ~100k/1M/5M params.

Time: every available implementation runs round-robin in one process (round r of each before
round r+1 of any), so a noisy neighbour slows all of them alike; each row reports the median and
its ratio to optcompile-inductor in the same run. pytest-benchmark records optcompile-inductor's
rounds. Memory: peak growth of one iteration in a fresh worker process per configuration
(``maml_problem.py``). Targets at ~1M parameters: at least 2x faster than TorchOpt's MetaAdam
and than higher, no slower than ``torch.compile`` of a hand-written Adam, and peak memory at most
0.75x TorchOpt's.
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
ROUNDS = {"100k": 31, "1M": 11, "5M": 5}
OURS = "optcompile-inductor"


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
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(ROUNDS[size]):
        for name in names:
            start = time.perf_counter()
            iterations[name]()
            times[name].append(time.perf_counter() - start)
    benchmark.pedantic(iterations[OURS], rounds=3, iterations=1)
    ours = statistics.median(times[OURS])
    params = parameter_count(hidden)
    for name in names:
        median = statistics.median(times[name])
        memory = _peak_memory(name, hidden)
        add_row(
            "maml",
            implementation=name,
            params=params,
            seconds_per_iteration=median,
            time_vs_optcompile=median / ours,
            peak_growth_mib=memory["peak_growth_mib"],
            peak_over_param_bytes=memory["peak_growth_mib"] * 2**20 / (4 * params),
        )
