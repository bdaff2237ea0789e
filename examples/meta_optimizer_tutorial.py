"""TorchOpt's "Meta-Optimizer" tutorial, cell by cell, on optcompile.

Run: ``python examples/meta_optimizer_tutorial.py``. The printed values are the tutorial's:
x.grad = -28, a = -1.0000 twice, ((EmptyState(),),), -28 then -31, and -12 with the clip chain.
The graphs of sections 1.1 and 5 are written as DOT text (and SVG when Graphviz's ``dot`` is
installed) under ``--out`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import optcompile as torchopt


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0), requires_grad=True)

    def forward(self, x):
        return self.a * (x**2)


class Net2Tasks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0), requires_grad=True)

    def task1(self, x):
        return self.a * x**2

    def task2(self, x):
        return self.a * x


def display(graph, name: str, out: Path) -> None:
    """Stand-in for IPython's display: save the graph and say how big it is."""
    (out / f"{name}.dot").write_text(graph.source)
    if shutil.which("dot"):
        graph.render(out / name, format="svg", cleanup=True)
    nodes = sum(1 for line in graph.body if "label=" in line)
    print(f"graph {name}: {nodes} nodes -> {out / name}.dot")


def section_1_basic() -> None:
    net = Net()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim = torchopt.MetaOptimizer(net, torchopt.sgd(lr=1.0))  # low-level API
    optim = torchopt.MetaSGD(net, lr=1.0)  # high-level API

    inner_loss = net(x)
    optim.step(inner_loss)
    outer_loss = net(x)
    outer_loss.backward()
    # x.grad = - 4 * lr * x^3 + 2 * a_0 * x = -32 + 4 = -28
    print(f"x.grad = {x.grad!r}")


def section_1_1_moments(out: Path) -> None:
    for moment_requires_grad in (False, True):
        net = Net()
        x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
        y = torch.tensor(1.0)
        optim = torchopt.MetaAdam(net, lr=1.0, moment_requires_grad=moment_requires_grad)
        net_state_0 = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix="step0.")
        inner_loss = F.mse_loss(net(x), y)
        optim.step(inner_loss)
        net_state_1 = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix="step1.")
        outer_loss = F.mse_loss(net(x), y)
        graph = torchopt.visual.make_dot(
            outer_loss, params=[net_state_0, net_state_1, {"x": x, "outer_loss": outer_loss}]
        )
        display(graph, f"metaadam_moment_requires_grad_{moment_requires_grad}", out)


def section_2_1_extract_recover() -> None:
    net = Net()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim = torchopt.MetaAdam(net, lr=1.0)

    init_net_state = torchopt.extract_state_dict(net, by="reference")
    init_optim_state = torchopt.extract_state_dict(optim, by="reference")
    init_net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
    torchopt.extract_state_dict(net, by="copy")
    torchopt.extract_state_dict(optim, by="copy")
    torchopt.extract_state_dict(net, by="deepcopy")
    torchopt.extract_state_dict(optim, by="deepcopy")

    for _ in range(2):
        inner_loss = net(x)
        optim.step(inner_loss)
    print(f"a = {net.a!r}")

    torchopt.recover_state_dict(net, init_net_state)
    torchopt.recover_state_dict(optim, init_optim_state)
    for _ in range(2):
        inner_loss = net(x)
        optim.step(inner_loss)
    print(f"a = {net.a!r}")  # the same result


def section_2_2_multi_task() -> None:
    net = Net2Tasks()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim = torchopt.MetaSGD(net, lr=1.0)

    init_net_state = torchopt.extract_state_dict(net, by="reference")
    init_optim_state = torchopt.extract_state_dict(optim, by="reference")
    print(f"init_optim_state = {init_optim_state!r}")

    inner_loss_1 = net.task1(x)
    optim.step(inner_loss_1)
    outer_loss_1 = net.task1(x)
    outer_loss_1.backward()
    print(f"Task 1: x.grad = {x.grad!r}")

    torchopt.recover_state_dict(net, init_net_state)
    torchopt.recover_state_dict(optim, init_optim_state)
    inner_loss_2 = net.task2(x)
    optim.step(inner_loss_2)
    outer_loss_2 = net.task2(x)
    outer_loss_2.backward()
    # x.grad = (- 4 * lr * x^3 + 2 * a_0 * x) + (- 2 * lr * x + a_0) = -28 - 3 = -31
    print(f"Accumulated: x.grad = {x.grad!r}")


def section_3_chain() -> None:
    net = Net()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim_impl = torchopt.combine.chain(
        torchopt.clip.clip_grad_norm(max_norm=2.0),
        torchopt.sgd(lr=1.0, moment_requires_grad=True),
    )
    optim = torchopt.MetaOptimizer(net, optim_impl)
    inner_loss = net(x)
    optim.step(inner_loss)
    outer_loss = net(x)
    outer_loss.backward()
    # scale = x^2 / max_norm = 2, x.grad = - 4 * lr * x^3 / scale + 2 * a_0 * x = -16 + 4 = -12
    print(f"x.grad = {x.grad!r}")


def section_4_schedules() -> None:
    net = Net()
    schedule = torchopt.schedule.linear_schedule(
        init_value=1e-3, end_value=1e-4, transition_steps=10000, transition_begin=2000
    )
    torchopt.adam(lr=schedule)
    torchopt.Adam(net.parameters(), lr=schedule)
    torchopt.MetaAdam(net, lr=schedule)
    print(f"linear_schedule at steps 0, 7000, 12000: {[schedule(t) for t in (0, 7000, 12000)]}")


def section_5_accelerated(out: Path) -> None:
    print(torchopt.accelerated_op_available(torch.device("cpu")))
    print(torchopt.accelerated_op_available(torch.device("cuda")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = Net().to(device=device)
    x = nn.Parameter(torch.tensor(2.0, device=device), requires_grad=True)
    y = torch.tensor(1.0, device=device)
    optim = torchopt.MetaAdam(net, lr=1.0, moment_requires_grad=True, use_accelerated_op=True)
    net_state_0 = torchopt.extract_state_dict(
        net, by="reference", enable_visual=True, visual_prefix="step0."
    )
    inner_loss = F.mse_loss(net(x), y)
    optim.step(inner_loss)
    net_state_1 = torchopt.extract_state_dict(
        net, by="reference", enable_visual=True, visual_prefix="step1."
    )
    outer_loss = F.mse_loss(net(x), y)
    graph = torchopt.visual.make_dot(
        outer_loss, params=[net_state_0, net_state_1, {"x": x, "outer_loss": outer_loss}]
    )
    display(graph, f"accelerated_metaadam_{device.type}", out)


def section_6_known_issues() -> None:
    net = Net()
    torchopt.MetaAdam(net, lr=1.0, use_accelerated_op=True)
    impl = torchopt.chain(
        torchopt.hook.register_hook(torchopt.hook.zero_nan_hook), torchopt.adam(1e-1)
    )
    torchopt.MetaOptimizer(net, impl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="folder for the graphs")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="optcompile-tutorial-"))
    out.mkdir(parents=True, exist_ok=True)
    section_1_basic()
    section_1_1_moments(out)
    section_2_1_extract_recover()
    section_2_2_multi_task()
    section_3_chain()
    section_4_schedules()
    section_5_accelerated(out)
    section_6_known_issues()


if __name__ == "__main__":
    main()
