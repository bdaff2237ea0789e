"""Whole-step compile cost and memory (issue 10's targets), each measured in fresh processes.

Compile (``whole_step_cost.py``, one worker process per measurement, one thread): the MAML
problem of ``maml_problem.py`` at ~100k parameters, in the step form (``@optcompile`` on one
inner step, called K times) and the loop form (the K steps in one decorated function), for
K = 5 and K = 20. ``cold``: an empty cache directory (``OPTCOMPILE_CACHE_DIR``, which optcompile
exports as ``TORCHINDUCTOR_CACHE_DIR``, set here too, and ``TRITON_CACHE_DIR``); ``warm``: a
new process on the directory the cold run filled. Seconds are wall time from the first call of
the decorated function to the outer gradient of the first outer iteration. Targets: cold K=5
step <= 30 s, warm <= 5 s, K=20 <= 1.5x K=5 (step form).

Memory (``maml_problem.py`` as a worker, one process per contender and size): peak resident
memory growth of one outer iteration (K=5) above the resident memory after a warm-up
iteration, with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors return to the system
and resident memory follows live tensor bytes; VmHWM (the kernel's exact peak, reset through
``/proc/self/clear_refs``) rather than a sampling of RSS. Target: <= 0.7x TorchOpt's.

Run several times for ranges: ``python -m pytest bench/test_whole_step_cost.py -q -s``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _report import add_row
from maml_problem import HIDDEN_FOR_SIZE, available, parameter_count

HERE = Path(__file__).parent
MEMORY_CONTENDERS = [
    "optcompile-meta-gradient",
    "optcompile-whole-step",
    "optcompile-whole-step-budget-0.5",
    "optcompile-whole-loop",
    "optcompile-inductor",
    "optcompile-eager",
    "torchopt-0.7.3",
    "higher-0.2.1",
]
REFERENCE = "torchopt-0.7.3"


def _run_worker(script: str, args: list[str], env: dict[str, str], timeout: int) -> dict:
    """Run ``bench/SCRIPT ARGS`` in a fresh process; return the JSON of its last output line."""
    out = subprocess.run(
        [sys.executable, str(HERE / script), *args],
        env=dict(os.environ, **env), capture_output=True, text=True, check=True,
        timeout=timeout, cwd=HERE,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compile_once(form: str, steps: int, cache: Path) -> dict:
    env = {
        "OPTCOMPILE_CACHE_DIR": str(cache),
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "TRITON_CACHE_DIR": str(cache / "triton"),
    }
    return _run_worker("whole_step_cost.py", [form, str(steps)], env, timeout=1200)


@pytest.mark.parametrize("form", ["step", "loop"])
def test_cold_and_warm_compile_for_5_and_20_steps(tmp_path, form):
    cold_seconds = {}
    for steps in (5, 20):
        cache = tmp_path / f"cache-{steps}"
        cold = _compile_once(form, steps, cache)
        warm = _compile_once(form, steps, cache)
        cold_seconds[steps] = cold["seconds"]
        for name, run in (("cold", cold), ("warm", warm)):
            add_row(
                "whole_step_compile",
                form=form,
                K=steps,
                cache=name,
                seconds=run["seconds"],
                graphs=run["graphs"],
                dynamo_s=run["phases"]["dynamo_trace"],
                inductor_codegen_s=run["phases"]["inductor_codegen"],
            )
    add_row(
        "whole_step_compile",
        form=form,
        K="20 / 5",
        cache="cold",
        seconds=cold_seconds[20] / cold_seconds[5],
    )


def _peak_memory(impl: str, hidden: int) -> dict:
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    return _run_worker("maml_problem.py", [impl, str(hidden)], env, timeout=900)


@pytest.mark.parametrize("size", ["100k", "1M"])
def test_peak_memory_of_an_outer_iteration(size):
    hidden = HIDDEN_FOR_SIZE[size]
    names = [name for name in MEMORY_CONTENDERS if available(name)]
    growth = {name: _peak_memory(name, hidden)["peak_growth_mib"] for name in names}
    params = parameter_count(hidden)
    for name in names:
        add_row(
            "whole_step_memory",
            implementation=name,
            params=params,
            peak_growth_mib=growth[name],
            param_copies=growth[name] * 2**20 / (4 * params),
            vs_torchopt=growth[name] / growth[REFERENCE] if REFERENCE in growth else "",
        )
