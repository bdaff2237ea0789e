"""optcompile's fused kernels against its eager reference on a small MAML problem.

Run: ``python examples/compiled_vs_eager.py``. One outer iteration = 5 inner MetaAdam steps on
an MLP (~100k parameters) + the outer backward. Prints the median time per iteration on each
backend (one thread), how long the first compile took, and the largest difference between the
two backends' meta-gradients (float32 rounding only).
"""

from __future__ import annotations

import statistics
import time

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


def meta_gradient(backend: str, rounds: int) -> tuple[list[torch.Tensor], list[float]]:
    net, (x, y, xv, yv) = make_problem()
    optim = optcompile.MetaAdam(net, lr=1e-3, backend=backend)
    net_state = optcompile.extract_state_dict(net, by="reference")
    optim_state = optcompile.extract_state_dict(optim, by="reference")
    times = []
    for _ in range(rounds):
        for p in net.parameters():
            p.grad = None
        start = time.perf_counter()
        for _ in range(INNER_STEPS):
            optim.step(((net(x) - y) ** 2).mean())
        ((net(xv) - yv) ** 2).mean().backward()
        times.append(time.perf_counter() - start)
        optcompile.recover_state_dict(net, net_state)
        optcompile.recover_state_dict(optim, optim_state)
    return [p.grad.clone() for p in net.parameters()], times


def main() -> None:
    torch.set_num_threads(1)
    eager_grads, eager_times = meta_gradient("eager", rounds=11)
    compiled_grads, compiled_times = meta_gradient("inductor", rounds=11)
    first, rest = compiled_times[0], statistics.median(compiled_times[1:])
    eager = statistics.median(eager_times[1:])
    difference = max((a - b).abs().max().item() for a, b in zip(eager_grads, compiled_grads,
                                                                    strict=True))  # fmt: skip
    scale = max(g.abs().max().item() for g in eager_grads)
    print(f"MAML outer iteration, {INNER_STEPS} inner MetaAdam steps, one thread:")
    print(f"  eager    {eager * 1e3:7.2f} ms (median)")
    print(f"  inductor {rest * 1e3:7.2f} ms (median); first iteration incl. compile {first:.1f} s")
    print(f"  speed-up {eager / rest:.2f}x")
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
