"""make_dot: graph shape, names and DOT syntax (the `dot` program is not needed)."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

import optcompile
from optcompile.state import extract_state_dict
from optcompile.visual import make_dot, resize_graph

pytest.importorskip("graphviz")

_ATTR = r'(\w+)=("(?:[^"\\]|\\.)*"|[\w.]+)'
_NODE = re.compile(r"\t(\d+) \[(.*)\]\n", re.DOTALL)
_EDGE = re.compile(r"\t(\d+) -> (\d+)(?: \[(.*)\])?\n", re.DOTALL)


def _parse(dot):
    """Check that ``dot.source`` is DOT text and return ``({id: attrs}, [(tail, head)])``."""
    source = dot.source
    assert source.startswith("digraph {\n") and source.endswith("}\n")
    nodes, edges = {}, []
    for statement in dot.body:
        if match := _EDGE.fullmatch(statement):
            edges.append(match.group(1, 2))
            attrs = match.group(3) or ""
        else:
            match = _NODE.fullmatch(statement)
            assert match, statement
            attrs = match.group(2)
            nodes[match.group(1)] = dict(re.findall(_ATTR, attrs))
        assert re.fullmatch(rf"(?:{_ATTR}(?: |$))*", attrs, re.DOTALL), attrs
    assert all(tail in nodes and head in nodes for tail, head in edges)
    return nodes, edges


def _labels(dot):
    return sorted(attrs["label"].strip('"') for attrs in _parse(dot)[0].values())


def test_graph_of_a_times_x_squared():
    a = torch.tensor(3.0, requires_grad=True)
    x = torch.ones(2, requires_grad=True)
    y = a * x**2
    nodes, edges = _parse(make_dot(y, params={"a": a, "x": x}))
    # y, MulBackward0, PowBackward0, two AccumulateGrad and their two leaves.
    assert len(nodes) == 7 and len(edges) == 6
    assert _labels(make_dot(y, params={"a": a, "x": x})) == [
        "\n(2,)",
        "AccumulateGrad",
        "AccumulateGrad",
        "MulBackward0",
        "PowBackward0",
        "a\n()",
        "x\n(2,)",
    ]


def test_names_from_named_parameters_and_pairs():
    net = nn.Linear(3, 2)
    out = net(torch.ones(1, 3)).sum()
    labels = _labels(make_dot(out, params=net.named_parameters()))
    assert "weight\n(2, 3)" in labels and "bias\n(2,)" in labels
    assert _labels(make_dot(out, params=list(net.named_parameters()))) == labels


def test_seed_meta_step_names_each_step():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return self.a * x**2

    net, x = Net(), nn.Parameter(torch.tensor(2.0))
    state0 = extract_state_dict(net, enable_visual=True, visual_prefix="step0.")
    (grad,) = torch.autograd.grad(net(x), net.a, create_graph=True)
    net._parameters["a"] = net.a - grad
    state1 = extract_state_dict(net, enable_visual=True, visual_prefix="step1.")
    outer_loss = net(x)
    dot = make_dot(outer_loss, params=[state0, state1, {"x": x, "outer_loss": outer_loss}])
    nodes, _ = _parse(dot)
    labels = _labels(dot)
    assert "step0.a\n()" in labels and "x\n()" in labels and "outer_loss\n()" in labels
    assert "SubBackward0\nstep1.a" in labels
    named_fn = next(n for n in nodes.values() if "step1.a" in n["label"])
    assert named_fn["fillcolor"] == "lightblue"


def test_show_attrs_and_show_saved():
    t = torch.ones(2, 3, requires_grad=True)
    y = (t**2).sum(dim=(0, 1))
    labels = "\n".join(_labels(make_dot(y, show_attrs=True, max_attr_chars=4)))
    assert "PowBackward0\n---" in labels and "exponent: 2\nself    : [...\n" in labels
    assert re.search(r"\ndim +: \(\.\.\.\nkeepdim +: F\.\.\.\n", labels)  # 4 characters

    # The saved leaf t is the AccumulateGrad variable: it keeps its node, and gains an edge.
    plain, plain_edges = _parse(make_dot(y))
    nodes, edges = _parse(make_dot(y, show_saved=True))
    assert nodes == plain and len(edges) == len(plain_edges) + 1
    # Saved non-leaf tensors get orange nodes: pow's input t * 2 and mul's wrapped scalar 2.
    z = (t * 2).pow(2).sum()
    plain, plain_edges = _parse(make_dot(z))
    nodes, edges = _parse(make_dot(z, show_saved=True))
    added = sorted(v["label"] for k, v in nodes.items() if k not in plain)
    assert added == ['"other\n()"', '"self\n(2, 3)"'] and len(edges) == len(plain_edges) + 2
    assert all(v["fillcolor"] == "orange" for k, v in nodes.items() if k not in plain)


def test_resize_graph_follows_the_number_of_statements():
    x = torch.ones(1, requires_grad=True)
    dot = make_dot((x * 2).exp())
    assert dot.graph_attr["size"] == "12.0,12.0"
    resize_graph(dot, size_per_element=2.0, min_size=1.0)
    assert dot.graph_attr["size"] == f"{2.0 * len(dot.body)},{2.0 * len(dot.body)}"
    with pytest.raises(ValueError, match="size_per_element=0 must be > 0"):
        resize_graph(dot, size_per_element=0)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"x": 1.0}, TypeError, r"params\['x'\] must be a tensor"),
        (3, TypeError, "params must be a mapping"),
        (extract_state_dict(nn.Linear(1, 1)), ValueError, "enable_visual=True"),
    ],
)
def test_bad_params(params, error, match):
    x = torch.ones(1, requires_grad=True)
    with pytest.raises(error, match=match):
        make_dot(x * 2, params=params)


def test_bad_max_attr_chars():
    x = torch.ones(1, requires_grad=True)
    with pytest.raises(ValueError, match="max_attr_chars=3 must be >= 4"):
        make_dot(x * 2, show_attrs=True, max_attr_chars=3)
    with pytest.raises(TypeError, match="max_attr_chars must be an int, got float"):
        make_dot(x * 2, max_attr_chars=10.0)


def test_missing_graphviz_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(ImportError, match="pip install graphviz"):
        make_dot(torch.ones(1))


# ------------------------------------------------------------------ found in review


def test_visual_names_every_parameter_of_a_fused_step():
    net = nn.Linear(3, 2)
    optim = optcompile.MetaSGD(net, lr=0.1, backend="eager")
    optim.step(net(torch.ones(1, 3)).sum())
    state = optcompile.extract_state_dict(net, enable_visual=True, visual_prefix="step1.")
    assert sorted(state.visual_contents.values()) == ["step1.weight, step1.bias"]
    dot = optcompile.visual.make_dot(net(torch.ones(1, 3)).sum(), params=state)
    assert "step1.weight, step1.bias" in dot.source
