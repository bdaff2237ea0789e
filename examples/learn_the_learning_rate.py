"""Meta-learn the inner learning rate of a few-shot regressor (a hypergradient through MetaSGD).

Run: ``python examples/learn_the_learning_rate.py``. Each outer iteration samples a sine task,
adapts a small MLP with K inner MetaSGD steps whose learning rate is a tensor that requires
grad, and lets the validation loss's gradient (through all K steps) update both the
initialisation (MAML) and log(lr). Prints how the learned learning rate and the post-adaptation
loss evolve.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn

import optcompile


def sine_task(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    amplitude = 0.5 + 4.5 * torch.rand((), generator=generator)
    phase = math.pi * torch.rand((), generator=generator)
    x = 10 * torch.rand(20, 1, generator=generator) - 5
    y = amplitude * torch.sin(x + phase)
    return x[:10], y[:10], x[10:], y[10:]


def train(outer_iterations: int = 300, inner_steps: int = 3, seed: int = 0) -> list[tuple]:
    """Return (iteration, learned lr, mean post-adaptation loss of the last 50 tasks) rows."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    log_lr = torch.tensor(math.log(1e-3), requires_grad=True)
    outer = torch.optim.Adam(
        [{"params": net.parameters()}, {"params": [log_lr], "lr": 0.03}], lr=1e-3
    )
    initial = optcompile.extract_state_dict(net, by="reference")
    losses, rows = [], []
    for iteration in range(1, outer_iterations + 1):
        x, y, x_val, y_val = sine_task(generator)
        inner = optcompile.MetaSGD(net, lr=log_lr.exp())
        for _ in range(inner_steps):
            inner.step(((net(x) - y) ** 2).mean())
        loss = ((net(x_val) - y_val) ** 2).mean()
        outer.zero_grad()
        loss.backward()  # through the inner steps into the initialisation and log(lr)
        outer.step()
        optcompile.recover_state_dict(net, initial)  # back to the (updated) initialisation
        losses.append(loss.item())
        if iteration % 50 == 0:
            rows.append((iteration, log_lr.exp().item(), sum(losses[-50:]) / 50))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()
    print("iteration | learned inner lr | validation loss after adaptation (mean of 50)")
    for iteration, lr, loss in train(args.iterations):
        print(f"{iteration:9d} | {lr:16.5f} | {loss:.4f}")


if __name__ == "__main__":
    main()
