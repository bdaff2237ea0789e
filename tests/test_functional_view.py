"""``MetaOptimizer.functional_view``: a meta-optimizer's inner steps written functionally (and
compiled whole by ``@optcompile``) give what ``step`` gives: the same adapted parameters, state
and float64 meta-gradients, tied parameters included."""

from __future__ import annotations

import optree
import pytest
import torch
from torch.func import functional_call, grad

import optcompile
from optcompile.lowering.backends.inductor import availability

K = 3
TOL = {"rtol": 1e-10, "atol": 1e-12}


class Tied(torch.nn.Module):
    """Two layers sharing one weight (a tied parameter has two names, one state)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


def _problem():
    torch.manual_seed(0)
    net = Tied().double()
    generator = torch.Generator().manual_seed(1)
    data = [torch.randn(8, d, generator=generator, dtype=torch.float64) for d in (4, 1, 4, 1)]
    return net, data


def _loss(out, y):
    return ((out - y) ** 2).mean()


def _meta_gradient_with_step(optimizer_class):
    net, (x, y, xq, yq) = _problem()
    meta_params = list(net.parameters())
    optim = optimizer_class(net)
    for _ in range(K):
        optim.step(_loss(net(x), y))
    meta = torch.autograd.grad(_loss(net(xq), yq), meta_params)
    return meta, optim.state_dict()


def _meta_gradient_with_view(optimizer_class, compile_step: bool):
    net, (x, y, xq, yq) = _problem()
    meta_params = list(net.parameters())
    optim = optimizer_class(net)
    view = optim.functional_view()

    def inner_step(params, state):
        def inner_loss(ps):
            return _loss(functional_call(net, view.as_dict(ps), (x,)), y)

        grads = grad(inner_loss)(params)
        updates, state = view.tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    step = optcompile.optcompile(inner_step) if compile_step else inner_step
    params, state = view.params, view.state
    for _ in range(K):
        params, state = step(params, state)
    view.commit(params, state)
    meta = torch.autograd.grad(_loss(net(xq), yq), meta_params)
    return meta, optim.state_dict()


OPTIMIZERS = {
    "adam": lambda net: optcompile.MetaAdam(net, lr=0.1),
    "sgd": lambda net: optcompile.MetaSGD(net, lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_functional_steps_equal_step(name, eager_backend):
    want, want_state = _meta_gradient_with_step(OPTIMIZERS[name])
    got, got_state = _meta_gradient_with_view(OPTIMIZERS[name], compile_step=False)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    got_leaves, want_leaves = optree.tree_leaves(got_state), optree.tree_leaves(want_state)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.compile
def test_compiled_functional_steps_equal_step():
    if (reason := availability(torch.device("cpu"))) is not None:
        pytest.skip(f"Inductor is not available here: {reason}")
    want, _ = _meta_gradient_with_step(OPTIMIZERS["adam"])
    got, _ = _meta_gradient_with_view(OPTIMIZERS["adam"], compile_step=True)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **TOL)


def test_view_names_tied_parameters_once_with_every_name():
    net, _ = _problem()
    view = optcompile.MetaSGD(net, lr=0.1).functional_view()
    assert ("first.weight", "second.weight") in view.names
    assert len(view.params) == len(view.names) == len(list(net.parameters()))
    every_name = {n for n, _ in net.named_parameters(remove_duplicate=False)}
    assert set(view.as_dict(view.params)) == every_name


def test_bad_commit_and_group_are_clear_errors():
    net, _ = _problem()
    optim = optcompile.MetaSGD(net, lr=0.1)
    view = optim.functional_view()
    with pytest.raises(ValueError, match=r"expected a tuple of 5 tensors"):
        view.commit(view.params[:-1], view.state)
    with pytest.raises(ValueError, match=r"params\[0\] \(first\.weight\) is \(3,\), expected"):
        view.commit((torch.zeros(3),) + view.params[1:], view.state)
    with pytest.raises(IndexError, match=r"group=1: this optimizer has 1"):
        optim.functional_view(group=1)
