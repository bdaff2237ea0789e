"""optcompile's fused kernels against its eager reference on a small MAML problem.

Run: ``python examples/compiled_vs_eager.py``. One outer iteration = 5 inner MetaAdam steps on
an MLP (~100k parameters) + the outer backward. Prints the median time per iteration on each
backend (one thread, medians of thread CPU time over rounds that alternate the two backends),
how long the first compile took, and the largest difference between the two backends'
meta-gradients (float32 rounding only).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

import optcompile

INNER_STEPS = 5


def make_problem(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                        nn.Linear(256, 10))  # fmt: skip
    data = tuple(torch.randn(32, d) for d in (64, 10, 64, 10))
    return net, data


def make_iteration(backend: str) -> tuple[Callable[[], float], Callable[[], list[torch.Tensor]]]:
    """One timed outer iteration on ``backend`` (returns its thread CPU time) and its grads."""
    net, (x, y, xv, yv) = make_problem()
    optim = optcompile.MetaAdam(net, lr=1e-3, backend=backend)
    net_state = optcompile.extract_state_dict(net, by="reference")
    optim_state = optcompile.extract_state_dict(optim, by="reference")

    def iteration() -> float:
        for p in net.parameters():
            p.grad = None
        start = time.thread_time()
        for _ in range(INNER_STEPS):
            optim.step(((net(x) - y) ** 2).mean())
        ((net(xv) - yv) ** 2).mean().backward()
        seconds = time.thread_time() - start
        optcompile.recover_state_dict(net, net_state)
        optcompile.recover_state_dict(optim, optim_state)
        return seconds

    return iteration, lambda: [p.grad.clone() for p in net.parameters()]


def main(rounds: int = 11) -> None:
    torch.set_num_threads(1)
    eager, eager_grads = make_iteration("eager")
    compiled, compiled_grads = make_iteration("inductor")
    start = time.perf_counter()
    compiled()  # the first call compiles
    first = time.perf_counter() - start
    eager()
    times: dict[str, list[float]] = {"eager": [], "inductor": []}
    for _ in range(rounds):  # alternate, so that a noisy host slows both alike
        times["eager"].append(eager())
        times["inductor"].append(compiled())
    difference = max((a - b).abs().max().item() for a, b in zip(eager_grads(), compiled_grads(),
                                                                    strict=True))  # fmt: skip
    scale = max(g.abs().max().item() for g in eager_grads())
    eager_median, compiled_median = (statistics.median(times[k]) for k in ("eager", "inductor"))
    print(f"MAML outer iteration, {INNER_STEPS} inner MetaAdam steps, one thread "
          f"(medians of thread time, {rounds} alternating rounds):")  # fmt: skip
    print(f"  eager    {eager_median * 1e3:7.2f} ms")
    print(f"  inductor {compiled_median * 1e3:7.2f} ms; first iteration with compile {first:.1f} s")
    print(f"  speed-up {eager_median / compiled_median:.2f}x")
    print(f"  meta-gradient difference: {difference:.2e} (largest entry {scale:.2e})")
    report = optcompile.stats()
    for backend in ("eager", "inductor"):
        row = report[backend]
        print(
            f"  {backend}: {row['steps']} steps, {row['vjp_calls']} backward calls, "
            f"{row['graphs']} graphs compiled, {row['recompiles']} recompiles"
        )


if __name__ == "__main__":
    main()
