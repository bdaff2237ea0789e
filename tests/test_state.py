"""extract/recover/stop_gradient/module_clone against the seed's closed forms and TorchOpt pins."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import nn

from optcompile.base import EmptyState
from optcompile.state import (
    ModuleState,
    extract_state_dict,
    module_clone,
    module_detach_,
    recover_state_dict,
    stop_gradient,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return self.a * x**2


def _sgd_step(net, loss, lr=1.0):
    """One differentiable SGD step written into the module, as a meta-optimizer does."""
    (grad,) = torch.autograd.grad(loss, net.a, create_graph=True)
    net._parameters["a"] = net.a - lr * grad


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))


def test_seed_multitask_flow_accumulates_through_references():
    net, x = Net(), nn.Parameter(torch.tensor(2.0))
    a0 = net.a
    init_state = extract_state_dict(net, by="reference")
    _sgd_step(net, net(x))
    assert net.a.grad_fn is not None and not isinstance(net.a, nn.Parameter)
    net(x).backward()
    assert x.grad.item() == -28.0  # -4 lr x^3 + 2 a0 x

    recover_state_dict(net, init_state)
    assert net.a is a0
    _sgd_step(net, net.a * x)
    (net.a * x).backward()
    assert x.grad.item() == -31.0  # -28 + (-2 lr x + a0)
    assert a0.grad.item() == 6.0  # d/da0 of a1 x^2 (= x^2) plus of a2 x (= x)


def test_module_state_layout_follows_modules_order():
    net = _mlp()
    state = extract_state_dict(net)
    assert [list(d) for d in state.params] == [["weight", "bias"], ["weight", "bias"], ["weight"]]
    assert [list(d) for d in state.buffers] == [
        ["running_mean", "running_var", "num_batches_tracked"]
    ]
    assert state.visual_contents is None and state.detach_buffers is False
    assert extract_state_dict(net, with_buffers=False).buffers == ()


@pytest.mark.parametrize("by", ["reference", "ref"])
def test_reference_returns_the_live_tensors(by):
    net = _mlp()
    state = extract_state_dict(net, by=by)
    live = [m._parameters for m in net.modules() if m._parameters]
    for saved, container in zip(state.params, live, strict=True):
        assert all(saved[k] is container[k] for k in saved)
    assert state.buffers[0]["running_mean"] is net[1].running_mean


@pytest.mark.parametrize("by", ["copy", "clone"])
def test_copy_keeps_a_clone_edge_to_the_original(by):
    net = _mlp()
    state = extract_state_dict(net, by=by)
    for saved, container in zip(state.params, [net[0], net[1], net[2]], strict=True):
        for k, v in saved.items():
            original = container._parameters[k]
            assert v is not original and torch.equal(v, original)
            assert type(v.grad_fn).__name__ == "CloneBackward0"
            assert v.grad_fn.next_functions[0][0].variable is original


@pytest.mark.parametrize("by", ["deepcopy", "deepclone"])
def test_deepcopy_is_detached_and_keeps_parameter_type_and_requires_grad(by):
    net = _mlp()
    net[2].weight.requires_grad_(False)
    state = extract_state_dict(net, by=by)
    for saved, module in zip(state.params, [net[0], net[1], net[2]], strict=True):
        for k, v in saved.items():
            original = module._parameters[k]
            assert isinstance(v, nn.Parameter) and v.grad_fn is None
            assert v.requires_grad == original.requires_grad
            assert torch.equal(v, original) and v.data_ptr() != original.data_ptr()
    mean = state.buffers[0]["running_mean"]
    assert not isinstance(mean, nn.Parameter) and mean.data_ptr() != net[1].running_mean.data_ptr()


def test_device_adds_one_hop_when_the_device_changes():
    net = Net()
    ref = extract_state_dict(net, by="reference", device="meta").params[0]["a"]
    assert ref.is_meta and ref.grad_fn.next_functions[0][0].variable is net.a
    copied = extract_state_dict(net, by="copy", device=torch.device("meta")).params[0]["a"]
    assert copied.grad_fn.next_functions[0][0].next_functions[0][0].variable is net.a
    deep = extract_state_dict(net, by="deepcopy", device="meta").params[0]["a"]
    assert deep.is_meta and deep.grad_fn is None and deep.requires_grad
    # .to() of a tensor already on the device is the tensor itself: no hop.
    assert extract_state_dict(net, device="cpu").params[0]["a"] is net.a
    copied = extract_state_dict(net, by="copy", device="cpu").params[0]["a"]
    assert copied.grad_fn.next_functions[0][0].variable is net.a


@pytest.mark.parametrize("by", ["reference", "ref", "copy", "clone", "deepcopy", "deepclone"])
def test_round_trip_restores_values(by):
    net = _mlp()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = extract_state_dict(net, by=by)
    for m in net.modules():
        for k, v in list(m._parameters.items()):
            if v is not None:  # the last Linear has bias=None
                m._parameters[k] = v * 3 + 1  # what a meta step leaves behind
        for k, v in list(m._buffers.items()):
            m._buffers[k] = v + 5
    recover_state_dict(net, state)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    if by in ("reference", "ref"):
        assert net[0].weight is state.params[0]["weight"]


def test_detach_buffers_saves_and_restores_fresh_detached_copies():
    net = _mlp()
    state = extract_state_dict(net, by="reference", detach_buffers=True)
    assert state.detach_buffers and state.params[0]["weight"] is net[0].weight
    saved_mean = state.buffers[0]["running_mean"]
    assert saved_mean is not net[1].running_mean and torch.equal(saved_mean, net[1].running_mean)
    net.train()(torch.randn(4, 3))  # updates the running statistics in place
    assert not torch.equal(saved_mean, net[1].running_mean)
    recover_state_dict(net, state)
    assert torch.equal(net[1].running_mean, saved_mean) and net[1].running_mean is not saved_mean


def test_state_without_buffers_leaves_buffers_alone():
    net = _mlp()
    state = extract_state_dict(net, by="deepcopy", with_buffers=False)
    net._modules["1"]._buffers["running_mean"] = mean = torch.ones(2)
    net._modules["0"]._parameters["bias"] = torch.zeros(2)
    recover_state_dict(net, state)
    assert net[1].running_mean is mean and torch.equal(net[0].bias, state.params[0]["bias"])


def test_enable_visual_names_grad_fns_and_leaves():
    net = nn.Sequential(Net(), Net())
    x = torch.tensor(2.0)
    _sgd_step(net[1], net[1](x))
    state = extract_state_dict(net, enable_visual=True, visual_prefix="step1.")
    assert state.visual_contents == {net[0].a: "step1.0.a", net[1].a.grad_fn: "step1.1.a"}


class TraceState(NamedTuple):
    trace: list


class FakeMetaOptimizer:
    """The meta-optimizer's state API: state_dict() returns the live states."""

    def __init__(self, *tensors):
        self.state_groups = [(TraceState(trace=list(tensors)), EmptyState())]

    def state_dict(self):
        return tuple(self.state_groups)

    def load_state_dict(self, state):
        self.state_groups = list(state)


def _optimizer():
    p = torch.ones(2, requires_grad=True)
    return p, FakeMetaOptimizer(p * 2, torch.zeros(1))


def test_optimizer_state_by_reference_copy_and_deepcopy():
    p, optim = _optimizer()
    live = optim.state_dict()[0][0].trace
    ref = extract_state_dict(optim)
    assert ref == ((TraceState(trace=live), EmptyState()),)
    assert all(s is t for s, t in zip(ref[0][0].trace, live, strict=True))
    copied = extract_state_dict(optim, by="clone")[0][0].trace[0]
    assert copied.grad_fn.next_functions[0][0] is live[0].grad_fn
    deep = extract_state_dict(optim, by="deepcopy")[0][0].trace[0]
    assert deep.grad_fn is None and deep.requires_grad and torch.equal(deep, live[0])

    recover_state_dict(optim, ((TraceState(trace=[deep]), EmptyState()),))
    assert optim.state_dict()[0][0].trace[0] is deep
    recover_state_dict(optim, ref)
    assert optim.state_dict()[0][0].trace[0] is live[0]


def test_stop_gradient_detaches_in_place_and_keeps_requires_grad():
    x = torch.tensor(1.0, requires_grad=True)
    y = 2 * x
    tree = {"y": y, "none": None, "n": 3}
    stop_gradient(tree)
    assert y.grad_fn is None and y.requires_grad and y.is_leaf

    fc = nn.Linear(1, 1, bias=False)
    fc._parameters["weight"] = fc.weight * 2
    assert module_detach_(fc) is fc and fc.weight.grad_fn is None and fc.weight.requires_grad

    net = _mlp()
    state = extract_state_dict(net, by="copy")
    stop_gradient(state)
    assert all(v.grad_fn is None for d in state.params for v in d.values())
    assert torch.equal(state.params[0]["weight"], net[0].weight)

    _, optim = _optimizer()
    stop_gradient(optim)
    assert optim.state_dict()[0][0].trace[0].grad_fn is None


def test_module_clone_of_tensor_trees():
    x = torch.tensor(1.0, requires_grad=True)
    y = 2 * x
    assert module_clone(y, by="reference") is y
    z = module_clone(x, by="copy")
    assert z is not x and z.grad_fn.next_functions[0][0].variable is x
    z = module_clone({"y": y}, by="deepcopy")["y"]
    assert z.grad_fn is None and torch.equal(z, y)
    z = module_clone(x, by="copy", device="meta")
    assert z.is_meta and z.grad_fn.next_functions[0][0].next_functions[0][0].variable is x


def test_module_clone_of_a_stepped_module():
    net, x = Net(), torch.tensor(2.0, requires_grad=True)
    a0 = net.a
    _sgd_step(net, net(x))  # a non-leaf tensor now lives in net._parameters
    ref = module_clone(net)
    assert ref is not net and ref._parameters is not net._parameters and ref.a is net.a
    copied = module_clone(net, by="copy")
    assert copied.a.grad_fn.next_functions[0][0] is net.a.grad_fn
    copied(x).backward()  # the clone's graph reaches a0 and x: d/da0 (a0 - x^2) x^2 = x^2
    assert a0.grad.item() == 4.0
    deep = module_clone(net, by="deepcopy")
    assert deep.a.grad_fn is None and deep.a.requires_grad and torch.equal(deep.a, net.a)

    mlp = _mlp()
    clone = module_clone(mlp, by="deepcopy", detach_buffers=True)
    assert isinstance(clone[0].weight, nn.Parameter) and clone[0].weight is not mlp[0].weight
    assert clone[1].running_var is not mlp[1].running_var
    inputs = torch.randn(4, 3)
    assert torch.equal(clone.eval()(inputs), mlp.eval()(inputs))


def test_module_clone_of_an_optimizer():
    _, optim = _optimizer()
    live = optim.state_dict()[0][0].trace
    clone = module_clone(optim, by="copy")
    assert clone is not optim and optim.state_dict()[0][0].trace[0] is live[0]
    cloned = clone.state_dict()[0][0].trace
    assert cloned[0].grad_fn.next_functions[0][0] is live[0].grad_fn
    assert cloned[1] is not live[1] and torch.equal(cloned[1], live[1])


def test_bad_copy_mode_and_device():
    net = Net()
    for call in (
        lambda: extract_state_dict(net, by="shallow"),
        lambda: module_clone(net, by=None),
    ):
        with pytest.raises(ValueError, match="expected one of reference, ref, copy, clone, deep"):
            call()
    with pytest.raises(ValueError, match="device='nowhere'"):
        extract_state_dict(net, device="nowhere")
    with pytest.raises(TypeError, match="device must be a torch.device"):
        extract_state_dict(net, device=1.5)


def test_wrong_target_types():
    net = Net()
    with pytest.raises(TypeError, match="target must be an nn.Module .*got list"):
        extract_state_dict([net.a])
    with pytest.raises(TypeError, match="target must be an nn.Module .*got str"):
        recover_state_dict("net", extract_state_dict(net))
    with pytest.raises(TypeError, match="state must be the ModuleState .*got tuple"):
        recover_state_dict(net, ({"a": net.a},))
    with pytest.raises(TypeError, match="target must be .*pytree of tensors, got int"):
        stop_gradient(3)
    with pytest.raises(TypeError, match="target must be .*got str"):
        module_clone("net")


def _snapshot(net):
    return [(id(c), dict(c)) for m in net.modules() for c in (m._parameters, m._buffers) if c]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s._replace(params=s.params[:2]), r"state.params holds 2 dicts .* has 3"),
        (lambda s: s._replace(buffers=s.buffers * 2), r"state.buffers holds 2 dicts .* has 1"),
        (
            lambda s: s._replace(buffers=({"running_mean": s.buffers[0]["running_mean"]},)),
            r"state.buffers\[0\] has keys \['running_mean'\] but the module has",
        ),
        (lambda s: s._replace(params=None), r"state.params holds NoneType dicts"),
    ],
)
def test_mismatched_state_raises_and_leaves_the_module_unchanged(edit, match):
    net = _mlp()
    state = edit(extract_state_dict(net, by="deepcopy"))
    before = _snapshot(net)
    with pytest.raises(ValueError, match=match):
        recover_state_dict(net, state)
    after = _snapshot(net)
    assert [i for i, _ in after] == [i for i, _ in before]
    for (_, old), (_, new) in zip(before, after, strict=True):
        assert old.keys() == new.keys() and all(old[k] is new[k] for k in old)


def test_state_of_another_module_is_rejected():
    with pytest.raises(ValueError, match=r"state.params\[0\] has keys \['a'\]"):
        recover_state_dict(_mlp(), ModuleState(params=({"a": torch.ones(1)},) * 3, buffers=()))
    with pytest.raises(TypeError, match=r"state.params\[0\]\['a'\] must be a tensor, got float"):
        recover_state_dict(Net(), ModuleState(params=({"a": 1.0},), buffers=()))
