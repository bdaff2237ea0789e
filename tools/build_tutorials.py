"""Build docs/tutorial_{functional_optimizer,visualization,stop_gradient}.ipynb: run each cell
in order (one namespace, stdout captured) and store what it printed as the cell's output.

Usage: python tools/build_tutorials.py   (tests/test_tutorials.py re-runs and compares)
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"

PRELUDE = """import torch
import torch.nn as nn
import torch.nn.functional as F

import optcompile as torchopt

torch.manual_seed(0)"""

FUNCTIONAL = [
    (
        "markdown",
        "# TorchOpt as a functional optimizer\n\nTutorial 1 of TorchOpt, run with "
        "`import optcompile as torchopt`: the Optax-style API (`init`, `update`, "
        "`apply_updates`), `FuncOptimizer`, the torch-style `Adam` against `torch.optim.Adam`, and "
        "differentiable optimisation with `inplace=False`.",
    ),
    ("code", PRELUDE),
    (
        "markdown",
        "## 1. Basic API\n\nA network, its parameters as a tuple of tensors, and a "
        "functional Adam: `init` builds the state, `update` turns gradients into updates, "
        "`apply_updates` adds them.",
    ),
    (
        "code",
        """class Net(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 1, bias=True)
        nn.init.ones_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(x)


def mse(inputs, targets):
    return ((inputs - targets) ** 2).mean()


batch_size, dim = 1, 1
xs = 2 * torch.ones(batch_size, dim)
ys = torch.ones(batch_size, 1)""",
    ),
    (
        "code",
        """net = Net(dim)
names = [name for name, _ in net.named_parameters()]
params = tuple(net.parameters())


def model(params, x):
    return torch.func.functional_call(net, dict(zip(names, params)), (x,))


optimizer = torchopt.adam(lr=1.0)
opt_state = optimizer.init(params)
print('Parameters before update:', params)
loss = mse(model(params, xs), ys)
grads = torch.autograd.grad(loss, params)
updates, opt_state = optimizer.update(grads, opt_state)
params = torchopt.apply_updates(params, updates)
print('Parameters after update:', params)""",
    ),
    (
        "markdown",
        "## 2. `FuncOptimizer`: the state kept for you\n\n`step(loss, params)` "
        "returns the new parameters.",
    ),
    (
        "code",
        """net = Net(dim)
params = tuple(net.parameters())
func_optimizer = torchopt.FuncOptimizer(torchopt.adam(lr=1.0))
print('Parameters before update:', params)
loss = mse(model(params, xs), ys)
params = func_optimizer.step(loss, params)
print('Parameters after update:', tuple(p.detach() for p in params))""",
    ),
    ("markdown", "## 3. The torch-style API, against `torch.optim.Adam`"),
    (
        "code",
        """for name, make in [
    ('torchopt.Adam', lambda p: torchopt.Adam(p, lr=1.0)),
    ('torch.optim.Adam', lambda p: torch.optim.Adam(p, lr=1.0)),
]:
    net = Net(dim)
    optim = make(net.parameters())
    optim.zero_grad()
    mse(net(xs), ys).backward()
    optim.step()
    print(f'{name:>16}:', net.fc.weight.item(), net.fc.bias.item())""",
    ),
    (
        "markdown",
        "## 4. Differentiable optimisation\n\nWith `inplace=False` the update is part "
        "of the graph: a loss after the step is differentiable with respect to anything the step "
        "depended on, here a meta-parameter that scales the inputs of the inner loss.",
    ),
    (
        "code",
        """net = Net(dim)
params = tuple(net.parameters())
meta_param = torch.tensor(1.0, requires_grad=True)
optimizer = torchopt.sgd(lr=1.0)
opt_state = optimizer.init(params)

inner_loss = mse(model(params, xs * meta_param), ys)
grads = torch.autograd.grad(inner_loss, params, create_graph=True)
updates, opt_state = optimizer.update(grads, opt_state, inplace=False)
params = torchopt.apply_updates(params, updates, inplace=False)

outer_loss = mse(model(params, xs), ys)
outer_loss.backward()
print('meta_param.grad =', meta_param.grad)""",
    ),
    (
        "markdown",
        "`moment_requires_grad=True` makes Adam's moments part of the graph from the "
        "start, so the meta-gradient also flows through them.",
    ),
    (
        "code",
        """net = Net(dim)
params = tuple(net.parameters())
meta_param = torch.tensor(1.0, requires_grad=True)
optimizer = torchopt.adam(lr=0.1, moment_requires_grad=True)
opt_state = optimizer.init(params)
for _ in range(2):
    inner_loss = mse(model(params, xs * meta_param), ys)
    grads = torch.autograd.grad(inner_loss, params, create_graph=True)
    updates, opt_state = optimizer.update(grads, opt_state, inplace=False)
    params = torchopt.apply_updates(params, updates, inplace=False)
mse(model(params, xs), ys).backward()
print('meta_param.grad =', meta_param.grad)""",
    ),
    (
        "markdown",
        "## 5. The accelerated op\n\n`use_accelerated_op=True` runs Adam on the native "
        "C++/CUDA kernel where it is available; the numbers are the same.",
    ),
    (
        "code",
        """print('accelerated op available on cpu:', torchopt.accelerated_op_available('cpu'))
results = []
for accelerated in (False, True):
    net = Net(dim)
    optim = torchopt.Adam(net.parameters(), lr=1.0, use_accelerated_op=accelerated)
    optim.zero_grad()
    mse(net(xs), ys).backward()
    optim.step()
    results.append((net.fc.weight.item(), net.fc.bias.item()))
print('same parameters:', results[0] == results[1])""",
    ),
]

VISUALIZATION = [
    (
        "markdown",
        "# Visualisation\n\nTutorial 2 of TorchOpt, with `import optcompile as "
        "torchopt`. `torchopt.visual.make_dot` returns a `graphviz.Digraph` of the autograd graph; "
        "rendering it needs the Graphviz `dot` binary, which this notebook does not require "
        "(it prints the graph's size and labels instead of drawing it).",
    ),
    (
        "code",
        PRELUDE + "\nimport shutil\n\nprint('dot binary available:', "
        "shutil.which('dot') is not None)",
    ),
    ("markdown", "## 1. A scalar expression"),
    (
        "code",
        """x = torch.tensor(1.0, requires_grad=True)
y = 2 * x
display = torchopt.visual.make_dot(y)
print(type(display).__name__)
print('nodes:', sum(' [label=' in line for line in display.body))""",
    ),
    ("markdown", "## 2. A network: nodes named after `named_parameters()`"),
    (
        "code",
        """class Net(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, x):
        return self.fc(x)


dim = 5
net = Net(dim)
xs = torch.ones(1, dim)
pred = net(xs)
loss = F.mse_loss(pred, torch.ones_like(pred))
graph = torchopt.visual.make_dot(loss, params=(net.named_parameters(), {'loss': loss}))
labels = sorted(l for l in ('fc.weight', 'fc.bias', 'loss') if any(l in b for b in graph.body))
print(labels)""",
    ),
    (
        "markdown",
        "## 3. A meta-optimisation step, labelled per step\n\n"
        "`extract_state_dict(net, enable_visual=True, visual_prefix='step0.')` names the "
        "parameters of each inner step in the graph.",
    ),
    (
        "code",
        """class MetaNet(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 1)

    def forward(self, x, meta_param):
        return self.fc(x) + meta_param


net = MetaNet(dim)
meta_param = torch.tensor(1.0, requires_grad=True)
optim = torchopt.MetaSGD(net, lr=1e-3)
xs, ys = torch.ones(1, dim), torch.zeros(1, 1)

init_state = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step0.')
loss = F.mse_loss(net(xs, meta_param), ys)
optim.step(loss)
step1_state = torchopt.extract_state_dict(net, enable_visual=True, visual_prefix='step1.')
outer = F.mse_loss(net(xs, meta_param), torch.ones_like(ys))
graph = torchopt.visual.make_dot(
    outer, [init_state, step1_state, {'meta_param': meta_param, 'loss': outer}]
)
names = ('step0.fc.weight', 'step0.fc.bias', 'step1.fc.weight', 'step1.fc.bias', 'meta_param')
print({name: any(name in line for line in graph.body) for name in names})""",
    ),
]

STOP_GRADIENT = [
    (
        "markdown",
        "# Stop gradient\n\nTutorial 4 of TorchOpt, with `import optcompile as "
        "torchopt`: after an outer step, the inner-updated network still points into the old "
        "graph; a second outer step fails until the network and the optimizer are restored and "
        "cut from that graph with `recover_state_dict` and `stop_gradient`.",
    ),
    ("code", PRELUDE),
    (
        "code",
        """class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        nn.init.ones_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x, meta_param):
        return self.fc(x) * meta_param


net = Net()
meta_param = torch.tensor(1.0, requires_grad=True)
inner_optim = torchopt.MetaSGD(net, lr=1e-1)
outer_optim = torch.optim.Adam([meta_param], lr=1e-1)
x, y = torch.tensor([[1.0]]), torch.tensor([[2.0]])
loss_fn = F.mse_loss""",
    ),
    ("markdown", "## 1. One outer step"),
    (
        "code",
        """init_net_state = torchopt.extract_state_dict(net)
init_optim_state = torchopt.extract_state_dict(inner_optim)

inner_loss = loss_fn(net(x, meta_param), y)
inner_optim.step(inner_loss)
outer_loss = loss_fn(net(x, meta_param), y)
outer_optim.zero_grad()
outer_loss.backward()
print(f'outer loss {outer_loss.item():.4f}, meta_param.grad {meta_param.grad.item():.4f}')
outer_optim.step()""",
    ),
    ("markdown", "## 2. A second outer step without stopping the gradient fails"),
    (
        "code",
        """inner_loss = loss_fn(net(x, meta_param), y)
try:
    inner_optim.step(inner_loss)
    outer_loss = loss_fn(net(x, meta_param), y)
    outer_optim.zero_grad()
    outer_loss.backward()
except RuntimeError as error:
    print('RuntimeError:', str(error).split('.')[0])""",
    ),
    ("markdown", "## 3. Restore, stop the gradient, and step again"),
    (
        "code",
        """torchopt.recover_state_dict(net, init_net_state)
torchopt.recover_state_dict(inner_optim, init_optim_state)
torchopt.stop_gradient(net)
torchopt.stop_gradient(inner_optim)

for step in range(3):
    init_net_state = torchopt.extract_state_dict(net)
    init_optim_state = torchopt.extract_state_dict(inner_optim)
    inner_loss = loss_fn(net(x, meta_param), y)
    inner_optim.step(inner_loss)
    outer_loss = loss_fn(net(x, meta_param), y)
    outer_optim.zero_grad()
    outer_loss.backward()
    outer_optim.step()
    print(f'step {step}: outer loss {outer_loss.item():.4f}, meta_param {meta_param.item():.4f}')
    torchopt.recover_state_dict(net, init_net_state)
    torchopt.recover_state_dict(inner_optim, init_optim_state)
    torchopt.stop_gradient(net)
    torchopt.stop_gradient(inner_optim)""",
    ),
]

TUTORIALS = {
    "tutorial_functional_optimizer.ipynb": FUNCTIONAL,
    "tutorial_visualization.ipynb": VISUALIZATION,
    "tutorial_stop_gradient.ipynb": STOP_GRADIENT,
}


def run_cells(sources: list[str]) -> list[str]:
    """Execute ``sources`` in order in one namespace; what each printed."""
    namespace: dict = {"__name__": "__main__"}
    printed = []
    for source in sources:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - our own cells
        printed.append(buffer.getvalue())
    return printed


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def build(cells: list[tuple[str, str]]) -> dict:
    code = [source for kind, source in cells if kind == "code"]
    outputs = iter(run_cells(code))
    notebook_cells = []
    count = 0
    for kind, source in cells:
        if kind == "markdown":
            notebook_cells.append(
                {"cell_type": "markdown", "metadata": {}, "source": _lines(source)}
            )
            continue
        count += 1
        text = next(outputs)
        out = [{"name": "stdout", "output_type": "stream", "text": _lines(text)}] if text else []
        notebook_cells.append(
            {
                "cell_type": "code",
                "execution_count": count,
                "metadata": {},
                "outputs": out,
                "source": _lines(source),
            }
        )
    return {
        "cells": notebook_cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def main() -> int:
    for name, cells in TUTORIALS.items():
        (DOCS / name).write_text(json.dumps(build(cells), indent=1) + "\n")
        print("wrote", DOCS / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
