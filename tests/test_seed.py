"""TorchOpt's "Meta-Optimizer" tutorial (the seed), section by section, on optcompile.

Every value the tutorial prints is asserted on the tensors, against the closed forms the
tutorial derives, and on the printed text itself (``repr``). The last tests run
``examples/meta_optimizer_tutorial.py`` as a user would and read its stdout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optree
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import optcompile as torchopt

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "meta_optimizer_tutorial.py"
GRAD_FN = r"grad_fn=<\w+>"  # the notebook's HTML export dropped the <...> of grad_fn
HAS_COMPILER = shutil.which("c++") is not None  # the native (accelerated) Adam is built with it
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for the native op")


# In-process sections run on the eager oracle; the script below runs the default backend.
pytestmark = pytest.mark.usefixtures("eager_backend")


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


# ------------------------------------------------------------------ 1. basic API


@pytest.mark.parametrize(
    "make",
    [
        lambda net: torchopt.MetaOptimizer(net, torchopt.sgd(lr=1.0)),
        lambda net: torchopt.MetaSGD(net, lr=1.0),
    ],
    ids=["low-level", "high-level"],
)
def test_section_1_bilevel_gradient(make):
    net = Net()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim = make(net)
    inner_loss = net(x)
    optim.step(inner_loss)
    outer_loss = net(x)
    outer_loss.backward()
    # x.grad = - 4 * lr * x^3 + 2 * a_0 * x = -32 + 4
    assert x.grad.item() == -28.0
    assert f"x.grad = {x.grad!r}" == "x.grad = tensor(-28.)"


@pytest.mark.parametrize(("lr", "x0", "a0"), [(0.5, 1.5, 2.0), (0.1, -3.0, 0.25)])
def test_section_1_closed_form(lr, x0, a0):
    """The tutorial's derivation, -4 lr x^3 + 2 a0 x, at other points (float64)."""
    net = Net().double()
    with torch.no_grad():
        net.a.fill_(a0)
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    optim = torchopt.MetaSGD(net, lr=lr)
    optim.step(net(x))
    net(x).backward()
    torch.testing.assert_close(x.grad.item(), -4 * lr * x0**3 + 2 * a0 * x0, rtol=1e-14, atol=0)


# ------------------------------------------------------------------ 1.1 moments in the graph


def _node_labels(source: str) -> list[str]:
    """The label of every node statement of a DOT source (edges have no label)."""
    return re.findall(r"^\t\d+ \[label=(?:\"([^\"]*)\"|(\S+?))[ \]]", source, flags=re.M)


def _moment_graph(moment_requires_grad: bool):
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
    return graph, outer_loss


def test_section_1_1_moment_requires_grad_adds_moment_nodes():
    pytest.importorskip("graphviz")
    graph_false, loss_false = _moment_graph(False)
    graph_true, loss_true = _moment_graph(True)
    labels_false = ["".join(pair) for pair in _node_labels(graph_false.source)]
    labels_true = ["".join(pair) for pair in _node_labels(graph_true.source)]
    for labels in (labels_false, labels_true):
        text = "\n".join(labels)
        for name in ("step0.a", "step1.a", "x\n()", "outer_loss\n()"):
            assert name in text
    # mu_0 and nu_0 become leaves of the graph: one AccumulateGrad and one tensor node each.
    assert len(labels_true) - len(labels_false) == 4
    assert labels_true.count("AccumulateGrad") - labels_false.count("AccumulateGrad") == 2
    assert labels_true.count("\n()") - labels_false.count("\n()") == 2  # two unnamed 0-d leaves
    # Same values either way: a1 = 1 - g / (|g| + eps) with g = 24, outer = (4 a1 - 1)^2.
    assert loss_true.item() == loss_false.item() == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ 2.1 extract and recover


def _section_2_1():
    net = Net()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim = torchopt.MetaAdam(net, lr=1.0)
    a0 = net.a

    init_net_state = torchopt.extract_state_dict(net, by="reference")
    init_optim_state = torchopt.extract_state_dict(optim, by="reference")
    init_net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
    init_net_state_copy = torchopt.extract_state_dict(net, by="copy")
    init_optim_state_copy = torchopt.extract_state_dict(optim, by="copy")
    init_net_state_deepcopy = torchopt.extract_state_dict(net, by="deepcopy")
    init_optim_state_deepcopy = torchopt.extract_state_dict(optim, by="deepcopy")

    assert init_net_state.params[0]["a"] is a0
    live = optree.tree_leaves(optim.state_dict())
    assert all(a is b for a, b in zip(optree.tree_leaves(init_optim_state), live, strict=True))
    copied = init_net_state_copy.params[0]["a"]
    assert copied is not a0 and copied.grad_fn.next_functions[0][0].variable is a0
    deep = init_net_state_deepcopy.params[0]["a"]
    assert isinstance(deep, nn.Parameter) and deep.grad_fn is None and deep.requires_grad
    moments = [t for t in optree.tree_leaves(init_optim_state) if t.is_floating_point()]
    copies = [t for t in optree.tree_leaves(init_optim_state_copy) if t.is_floating_point()]
    deep_copies = [
        t for t in optree.tree_leaves(init_optim_state_deepcopy) if t.is_floating_point()
    ]
    assert len(moments) == len(copies) == len(deep_copies) == 2  # mu and nu of `a`
    for moment, copy, deep_copy in zip(moments, copies, deep_copies, strict=True):
        assert copy.grad_fn.next_functions[0][0].variable is moment
        assert deep_copy.is_leaf and deep_copy.requires_grad and deep_copy is not moment

    for _ in range(2):
        inner_loss = net(x)
        optim.step(inner_loss)
    first = net.a
    first_repr = f"a = {net.a!r}"

    torchopt.recover_state_dict(net, init_net_state)
    torchopt.recover_state_dict(optim, init_optim_state)
    assert net.a is a0 and optim.state_groups[0] is init_optim_state[0]
    for _ in range(2):
        inner_loss = net(x)
        optim.step(inner_loss)
    return first, first_repr, net.a, f"a = {net.a!r}"


def test_section_2_1_recover_reproduces_the_inner_loop():
    first, _, second, _ = _section_2_1()
    # Adam's step is lr * g / (|g| + eps) = 4 / (4 + 1e-8) twice: a = 1 - 2 + 5e-9.
    assert first.item() == pytest.approx(-1.0, abs=1e-4)
    assert torch.equal(first, second)
    assert first is not second and second.grad_fn is not None


def test_section_2_1_printed_text():
    _, first_repr, _, second_repr = _section_2_1()
    assert re.fullmatch(rf"a = tensor\(-1\.0000, {GRAD_FN}\)", first_repr), first_repr
    assert second_repr == first_repr


# ------------------------------------------------------------------ 2.2 multi-task


def test_section_2_2_multi_task_accumulates():
    net = Net2Tasks()
    x = nn.Parameter(torch.tensor(2.0), requires_grad=True)
    optim = torchopt.MetaSGD(net, lr=1.0)
    a0 = net.a

    init_net_state = torchopt.extract_state_dict(net, by="reference")
    init_optim_state = torchopt.extract_state_dict(optim, by="reference")
    assert f"init_optim_state = {init_optim_state!r}" == "init_optim_state = ((EmptyState(),),)"

    inner_loss_1 = net.task1(x)
    optim.step(inner_loss_1)
    outer_loss_1 = net.task1(x)
    outer_loss_1.backward()
    assert x.grad.item() == -28.0
    assert f"Task 1: x.grad = {x.grad!r}" == "Task 1: x.grad = tensor(-28.)"

    torchopt.recover_state_dict(net, init_net_state)
    torchopt.recover_state_dict(optim, init_optim_state)
    inner_loss_2 = net.task2(x)
    optim.step(inner_loss_2)
    outer_loss_2 = net.task2(x)
    outer_loss_2.backward()
    # (- 4 lr x^3 + 2 a0 x) + (- 2 lr x + a0) = -28 - 3
    assert x.grad.item() == -31.0
    assert f"Accumulated: x.grad = {x.grad!r}" == "Accumulated: x.grad = tensor(-31.)"
    # By reference, a0 received both outer gradients: x^2 (task 1) + x (task 2).
    assert a0.grad.item() == 6.0


# ------------------------------------------------------------------ 3. chain with a clip


def test_section_3_clip_chain():
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
    # The clip coefficient c = max_norm / (|g| + 1e-6) is a constant to autograd:
    # x.grad = 2 x - 4 lr c x^3 = 4 - 32 c, about -12 (c is about 1/2).
    c = 2.0 / (4.0 + 1e-6)
    assert x.grad.item() == pytest.approx(4 - 32 * c, rel=1e-6)
    assert f"x.grad = {x.grad!r}" == "x.grad = tensor(-12.0000)"


# ------------------------------------------------------------------ 4. schedules


def test_section_4_schedules():
    net = Net()
    x = torch.tensor(2.0)

    def schedule():
        return torchopt.schedule.linear_schedule(
            init_value=1e-3, end_value=1e-4, transition_steps=10000, transition_begin=2000
        )

    functional_adam = torchopt.adam(lr=schedule())
    assert isinstance(functional_adam, torchopt.GradientTransformation)
    torchopt.Adam(net.parameters(), lr=schedule())
    meta_adam = torchopt.MetaAdam(net, lr=schedule())
    assert [schedule()(t) for t in (0, 2000, 7000, 12000)] == pytest.approx(
        [1e-3, 1e-3, 5.5e-4, 1e-4], rel=1e-12
    )

    # Adam's first step moves by lr = schedule(0) = 1e-3, in both optimizers.
    meta_adam.step(net(x))
    assert net.a.item() == pytest.approx(1.0 - 1e-3, rel=1e-6)
    classic = Net()
    adam = torchopt.Adam(classic.parameters(), lr=schedule())
    adam.zero_grad()
    classic(x).backward()
    adam.step()
    assert classic.a.item() == pytest.approx(1.0 - 1e-3, rel=1e-6)


# ------------------------------------------------------------------ 5/6. accelerated op


@needs_compiler
def test_section_5_accelerated_op_available():
    # The tutorial ran on a machine with a GPU (True, True); here CUDA is what the host has.
    assert torchopt.accelerated_op_available(torch.device("cpu")) is True
    expected_cuda = torch.cuda.is_available()
    assert torchopt.accelerated_op_available(torch.device("cuda")) is expected_cuda


@needs_compiler
def test_section_5_meta_adam_use_accelerated_op():
    """MetaAdam(use_accelerated_op=True) gives the plain MetaAdam's numbers (on this device)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    for accelerated in (False, True):
        net = Net().to(device=device)
        x = nn.Parameter(torch.tensor(2.0, device=device), requires_grad=True)
        y = torch.tensor(1.0, device=device)
        optim = torchopt.MetaAdam(
            net, lr=1.0, moment_requires_grad=True, use_accelerated_op=accelerated
        )
        optim.step(F.mse_loss(net(x), y))
        outer_loss = F.mse_loss(net(x), y)
        outer_loss.backward()
        results.append((net.a.detach(), x.grad))
    torch.testing.assert_close(results[1], results[0])


@needs_compiler
def test_section_6_known_issue_workarounds():
    net = Net()
    torchopt.MetaAdam(net, lr=1.0, use_accelerated_op=True)
    impl = torchopt.chain(
        torchopt.hook.register_hook(torchopt.hook.zero_nan_hook), torchopt.adam(1e-1)
    )
    inner_optim = torchopt.MetaOptimizer(net, impl)
    x = nn.Parameter(torch.tensor(2.0))
    inner_optim.step(net(x))
    net(x).backward()
    # The hook acts on the backward only: the same numbers as plain MetaAdam (lr 0.1).
    reference, x_ref = Net(), nn.Parameter(torch.tensor(2.0))
    torchopt.MetaOptimizer(reference, torchopt.adam(1e-1)).step(reference(x_ref))
    reference(x_ref).backward()
    torch.testing.assert_close(net.a, reference.a)
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert torch.isfinite(x.grad)


# ------------------------------------------------------------------ the example script


def _node_count(dot_source: str) -> int:
    return len(_node_labels(dot_source))


@pytest.mark.compile
def test_tutorial_script(tmp_path):
    """``python examples/meta_optimizer_tutorial.py --out DIR`` prints the tutorial's values."""
    pytest.importorskip("graphviz")
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cuda = str(torch.cuda.is_available())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    expected = [
        re.escape("x.grad = tensor(-28.)"),
        r"graph metaadam_moment_requires_grad_False: \d+ nodes -> .*\.dot",
        r"graph metaadam_moment_requires_grad_True: \d+ nodes -> .*\.dot",
        rf"a = tensor\(-1\.0000, {GRAD_FN}\)",
        rf"a = tensor\(-1\.0000, {GRAD_FN}\)",
        re.escape("init_optim_state = ((EmptyState(),),)"),
        re.escape("Task 1: x.grad = tensor(-28.)"),
        re.escape("Accumulated: x.grad = tensor(-31.)"),
        re.escape("x.grad = tensor(-12.0000)"),
        re.escape("linear_schedule at steps 0, 7000, 12000: [0.001, 0.00055, 0.0001]"),
        str(HAS_COMPILER),
        cuda,
        rf"graph accelerated_metaadam_{device}: \d+ nodes -> .*\.dot",
    ]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(expected), proc.stdout
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    assert lines[3] == lines[4]

    sources = {p.stem: p.read_text() for p in tmp_path.glob("*.dot")}
    assert set(sources) == {
        "metaadam_moment_requires_grad_False",
        "metaadam_moment_requires_grad_True",
        f"accelerated_metaadam_{device}",
    }
    without = _node_count(sources["metaadam_moment_requires_grad_False"])
    with_moments = _node_count(sources["metaadam_moment_requires_grad_True"])
    assert with_moments > without
    for line in lines[1:3]:
        nodes = int(re.search(r": (\d+) nodes", line).group(1))
        name = "True" if "True" in line else "False"
        assert nodes == _node_count(sources[f"metaadam_moment_requires_grad_{name}"])
