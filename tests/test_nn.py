"""optcompile.nn: MetaGradientModule bookkeeping and reparametrize/swap_state (TorchOpt's
contract, plus tied weights, buffers and eval()-mode meta-modules)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optcompile
from optcompile.nn import MetaGradientModule, reparameterize, reparametrize, swap_state


class Inner(MetaGradientModule):
    def __init__(self, meta_net: nn.Module, scale: torch.Tensor, frozen: torch.Tensor):
        super().__init__()
        self.meta_net = meta_net
        self.scale = scale
        self.frozen = frozen  # does not require grad: a plain attribute
        self.net = nn.Linear(3, 2)


def _inner(meta_net: nn.Module | None = None) -> tuple[Inner, nn.Module, torch.Tensor]:
    meta_net = meta_net or nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    scale = torch.tensor(2.0, requires_grad=True)
    return Inner(meta_net, scale, torch.ones(1)), meta_net, scale


def test_constructor_inputs_become_meta_parameters_and_meta_modules():
    module, meta_net, scale = _inner()
    assert dict(module.named_parameters()).keys() == {"net.weight", "net.bias"}
    names = [name for name, _ in module.named_meta_parameters()]
    assert names == ["scale", "meta_net.0.weight", "meta_net.0.bias", "meta_net.1.weight",
                     "meta_net.1.bias"]  # fmt: skip
    assert list(module.meta_parameters())[0] is scale
    assert list(module.meta_children()) == [meta_net]
    assert {name for name, _ in module.named_meta_modules()} == {"meta_net", "meta_net.0",
                                                                  "meta_net.1"}  # fmt: skip
    assert module.meta_net is meta_net and module.scale is scale
    assert "meta_net" not in dict(module.named_children())


def test_meta_modules_in_eval_mode_still_count():
    # TorchOpt #144: only modules with .training were meta-modules, so a network in eval()
    # (BatchNorm statistics frozen) contributed no meta-parameters.
    module, meta_net, _ = _inner(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval())
    assert not meta_net.training
    assert len(list(module.meta_parameters())) == 5
    assert list(module.meta_children()) == [meta_net]


def test_register_errors_name_the_problem():
    module, meta_net, scale = _inner()
    with pytest.raises(ValueError, match="is a meta-parameter"):
        module.register_parameter("p", scale)
    with pytest.raises(ValueError, match="is a meta-module"):
        module.add_module("m", meta_net)
    with pytest.raises(KeyError, match="can't contain '.'"):
        module.register_meta_parameter("a.b", torch.zeros(1, requires_grad=True))
    with pytest.raises(ValueError, match="requires_grad=False"):
        module.register_meta_parameter("c", torch.zeros(1))
    with pytest.raises(TypeError, match="not a Module subclass"):
        module.add_meta_module("d", 3)
    with pytest.raises(KeyError, match="already exists"):
        module.register_meta_parameter("net", torch.zeros(1, requires_grad=True))


def test_assignment_and_deletion_keep_the_registries_consistent():
    module, meta_net, scale = _inner()
    module.extra = torch.zeros(2, requires_grad=True)  # not a meta-input: an inner parameter
    assert "extra" in dict(module.named_parameters())
    module.register_meta_parameter("lr", torch.tensor(0.1, requires_grad=True))
    assert "lr" in dict(module.named_meta_parameters())
    del module.lr, module.meta_net
    assert [n for n, _ in module.named_meta_parameters()] == ["scale"]
    module.scale = None
    assert list(module.meta_parameters()) == []


def test_module_clone_keeps_meta_bookkeeping():
    module, _, scale = _inner()
    clone = optcompile.module_clone(module, by="deepcopy")
    assert [n for n, _ in clone.named_meta_parameters()][0] == "scale"


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 3, bias=False)
        self.out = nn.Linear(3, 3, bias=False)
        self.out.weight = self.embed.weight  # tied
        self.register_buffer("shift", torch.ones(3))

    def forward(self, x):
        return self.out(self.embed(x)) + self.shift


def test_reparametrize_matches_functional_call_with_ties_and_buffers():
    net, x = Tied(), torch.randn(2, 3)
    w, shift = torch.randn(3, 3), torch.randn(3)
    want = torch.func.functional_call(net, {"embed.weight": w, "shift": shift}, (x,))
    original = net.embed.weight
    with reparametrize(net, {"embed.weight": w, "shift": shift}) as same:
        assert same is net and net.out.weight is w  # the tie follows
        assert torch.equal(net(x), want)
    assert net.embed.weight is original and net.out.weight is original
    assert torch.equal(net.shift, torch.ones(3))
    assert reparameterize is reparametrize


def test_reparametrize_refuses_different_values_for_tied_names():
    conflicting = {"embed.weight": torch.ones(3, 3), "out.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match="tied"), reparametrize(Tied(), conflicting):
        pass


def test_reparametrize_restores_on_error_and_handles_missing_names():
    net = Tied()
    original = net.embed.weight
    ones = {"embed.weight": torch.ones(3, 3)}
    with pytest.raises(RuntimeError, match="boom"), reparametrize(net, ones):
        raise RuntimeError("boom")
    assert net.embed.weight is original
    with pytest.raises(AttributeError, match="allow_missing"):
        swap_state(net, {"nope": torch.ones(1)})
    with reparametrize(net, {"embed.extra": torch.ones(1)}, allow_missing=True):
        assert torch.equal(net.embed.extra, torch.ones(1))
    assert not hasattr(net.embed, "extra")


def test_swap_state_is_permanent_and_returns_the_old_tensors():
    net = nn.Linear(2, 2)
    old_weight = net.weight
    new = torch.zeros(2, 2, requires_grad=True) * 1  # a non-leaf: no Parameter needed
    old = swap_state(net, {"weight": new})
    assert net.weight is new and old["weight"] is old_weight
    swap_state(net, old)
    assert net.weight is old_weight


def test_meta_parameters_are_swappable():
    module, _, scale = _inner()
    with reparametrize(module, {"scale": torch.tensor(5.0), "meta_net.0.bias": torch.zeros(4)}):
        assert module.scale.item() == 5.0 and torch.equal(module.meta_net[0].bias, torch.zeros(4))
    assert module.scale is scale
