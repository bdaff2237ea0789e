"""Where the time of one MAML iteration in the meta-gradient form goes.

``python bench/profile_meta_gradient.py [HIDDEN] [OPTIONS_JSON]`` builds the meta-gradient
contender of ``maml_problem.py`` (``@optcompile`` around ``torch.func.grad`` of the K-step
unroll; H=256 by default, ~100k parameters), optionally with ``@optcompile(options=...)``
given as JSON (e.g. ``'{"cpp_wrapper": false}'``: Inductor's Python wrapper instead of
optcompile's CPU default, the C++ one), compiles it with Inductor's per-kernel
profiling on (so each fused C++ kernel is an event of its own: a separate cache entry, and a
cold compile of about a minute), then profiles 20 iterations on one thread and prints, per
iteration:

- ``matmul``: ATen's ``mm``/``addmm`` calls (MKL), which every contender computes alike
  (``aoti_torch_cpu_(add)mm_out`` from a C++ wrapper);
- ``fused kernels``: Inductor's generated elementwise kernels;
- ``graph wrapper``: the rest of the compiled graph's own time (the generated code that
  allocates buffers and calls the kernels: C++ by default, Python with ``cpp_wrapper`` off);
- ``guard check``: Dynamo's check that the call may reuse the compiled graph;
- ``other``: everything else (the bench's own Python, autograd bookkeeping).

It then times ``torch.mm`` alone on the MLP's matmul shapes (GFLOP/s), for scale. A diagnostic,
not a comparison: the profiler's own cost per event is in these times (with the C++ wrapper the
graph measured slower here than with the Python one, while timed without the profiler,
round-robin, the two are within a few percent); the ratios live in ``maml_ratios.py``.
"""

from __future__ import annotations

import json
import sys
import time

import torch

ITERATIONS = 20


def _categories(events: list, iterations: int) -> dict[str, tuple[float, float]]:
    """Self CPU time (ms) and call count per iteration for each category of the docstring."""
    totals: dict[str, list[float]] = {}
    for event in events:
        key = event.key
        if key in ("aten::mm", "aten::addmm", "aoti_torch_cpu_mm_out", "aoti_torch_cpu_addmm_out"):
            name = "matmul"
        elif "cpp_fused" in key:
            name = "fused kernels"
        elif key.startswith("## Call CompiledFxGraph"):
            name = "graph wrapper"
        elif key == "TorchDynamo Cache Lookup":
            name = "guard check"
        else:
            name = "other"
        ms, calls = totals.setdefault(name, [0.0, 0.0])
        totals[name] = [ms + event.self_cpu_time_total / 1e3, calls + event.count]
    return {name: (ms / iterations, calls / iterations) for name, (ms, calls) in totals.items()}


def _matmul_rates(hidden: int) -> list[tuple[tuple[int, int, int], float]]:
    """GFLOP/s of ``torch.mm`` alone on the forward and backward shapes of the MLP."""
    batch, rates = 32, []
    for m, k, n in [(batch, 128, hidden), (batch, hidden, hidden), (hidden, batch, hidden)]:
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        for _ in range(100):
            torch.mm(a, b, out=out)
        start = time.thread_time()
        for _ in range(1000):
            torch.mm(a, b, out=out)
        seconds = (time.thread_time() - start) / 1000
        rates.append(((m, k, n), 2 * m * k * n / seconds / 1e9))
    return rates


def main() -> None:
    hidden = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    torch.set_num_threads(1)
    import torch._inductor.config as inductor_config
    from maml_problem import make_net, optcompile_meta_gradient_iteration, parameter_count
    from torch.profiler import ProfilerActivity, profile

    inductor_config.cpp.enable_kernel_profile = True
    iteration = optcompile_meta_gradient_iteration(make_net(hidden), options=options)
    for _ in range(5):
        iteration()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(ITERATIONS):
            iteration()
    rows = _categories(list(prof.key_averages()), ITERATIONS)
    total = sum(ms for ms, _ in rows.values())
    print(f"{parameter_count(hidden)} parameters, options={options}, one thread, "
          f"{ITERATIONS} iterations profiled: {total:.2f} ms per iteration")  # fmt: skip
    for name in ("matmul", "fused kernels", "graph wrapper", "guard check", "other"):
        ms, calls = rows.get(name, (0.0, 0.0))
        print(f"  {name:14s} {ms:6.2f} ms  {100 * ms / total:5.1f}%  {calls:6.0f} calls")
    for shape, rate in _matmul_rates(hidden):
        print(f"  torch.mm alone {shape}: {rate:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
