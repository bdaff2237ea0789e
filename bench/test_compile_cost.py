"""Compile cost: cold (empty cache), warm cache in a new process, recompiles over 1000 steps.

Targets: cold compile of one rule's forward+VJP under 15 s; a new process with a warm cache
ready in under 3 s; zero recompiles across 1000 steps with a schedule and a changed lr.
"""

import json
import subprocess
import sys
import time

import torch
from _report import add_row

import optcompile
from optcompile.lowering.stats import reset_stats, stats

FIRST_STEP = """
import json, time, torch, optcompile
torch.set_num_threads(1)
p = torch.randn(1000, requires_grad=True)
tx = optcompile.adam(lr=1e-3, backend="inductor")
state = tx.init(p)
start = time.perf_counter()
g = (p ** 2).sum()
(grad,) = torch.autograd.grad(g, p, create_graph=True)
u, state = tx.update(grad, state, params=p, inplace=False)
(p + u).sum().backward()
stats = optcompile.stats()["inductor"]
print(json.dumps({"seconds": time.perf_counter() - start, "graphs": stats["graphs"]}))
"""


def _first_step(cache_dir: str) -> dict:
    env = {"OPTCOMPILE_CACHE_DIR": cache_dir, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_STEP], env=env, capture_output=True, text=True,
        check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cold_and_warm_compile(tmp_path):
    cold = _first_step(str(tmp_path))
    warm = _first_step(str(tmp_path))
    add_row("compile", case="cold: forward + VJP, empty cache", seconds=cold["seconds"],
            graphs=cold["graphs"])  # fmt: skip
    add_row("compile", case="warm cache, new process", seconds=warm["seconds"],
            graphs=warm["graphs"])  # fmt: skip


def test_no_recompiles_over_1000_steps_with_a_schedule():
    schedule = optcompile.schedule.linear_schedule(1e-2, 1e-3, transition_steps=800)
    p = torch.randn(10_000)
    tx = optcompile.adam(lr=schedule, backend="inductor")
    state = tx.init(p)
    tx.update(torch.randn_like(p), state, params=p)  # compile
    reset_stats()
    start = time.perf_counter()
    for step in range(1000):
        if step == 500:  # a changed lr: a new transform of the same rules, no new graph
            tx = optcompile.adam(lr=schedule, eps=1e-7, backend="inductor")
        updates, state = tx.update(torch.randn_like(p), state, params=p)
    report = stats()["inductor"]
    add_row("compile", case="1000 steps, schedule + changed hyper-parameter",
            seconds=time.perf_counter() - start, graphs=report["graphs"],
            recompiles=report["recompiles"])  # fmt: skip
    assert report["graphs"] == 0 and report["recompiles"] == 0
