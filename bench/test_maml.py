"""A MAML outer iteration (K=5 inner MetaAdam steps + outer backward) at ~100k/1M/5M params.

Time: pytest-benchmark median of rounds in this process. Memory: peak growth of one iteration
in a fresh worker process per configuration (``maml_problem.py``). Targets at ~1M parameters:
at least 2x faster than TorchOpt's MetaAdam and higher, no slower than ``torch.compile`` of a
hand-written Adam, and peak memory at most 0.75x TorchOpt's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _report import add_row
from maml_problem import HIDDEN_FOR_SIZE, IMPLEMENTATIONS, available, make_net, parameter_count

HERE = Path(__file__).parent


def _peak_memory(impl: str, hidden: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, str(HERE / "maml_problem.py"), impl, str(hidden)],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", HIDDEN_FOR_SIZE)
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_maml_outer_iteration(benchmark, impl, size):
    if not available(impl):
        pytest.skip(f"{impl} is not installed (pip install -e '.[bench]')")
    hidden = HIDDEN_FOR_SIZE[size]
    iteration = IMPLEMENTATIONS[impl](make_net(hidden))
    iteration()  # compile outside the timing
    rounds = {"100k": 15, "1M": 7, "5M": 3}[size]
    benchmark.pedantic(iteration, rounds=rounds, iterations=1, warmup_rounds=1)
    memory = _peak_memory(impl, hidden)
    params = parameter_count(hidden)
    add_row(
        "maml",
        implementation=impl,
        params=params,
        seconds_per_iteration=benchmark.stats.stats.median,
        peak_growth_mib=memory["peak_growth_mib"],
        peak_over_param_bytes=memory["peak_growth_mib"] * 2**20 / (4 * params),
    )
