"""Meta-optimizers: meta-gradients through unrolled inner steps, memory, and bad input.

References: central finite differences in float64 (the meta-gradient of an outer loss after K
differentiable inner steps), closed forms for the seed's one-parameter ``Net``, a twin model
without the dead parameters, and ``FuncOptimizer`` for ``MetaAdam``.
"""

from __future__ import annotations

import gc
import weakref

import optree
import pytest
import torch
from torch import nn
from torch.func import functional_call

import optcompile as oc

K = 3  # inner steps
H = 1e-5  # finite-difference step (float64)


# Meta-gradients are the subject here, not compilation: kernels run on the eager oracle.
pytestmark = pytest.mark.usefixtures("eager_backend")


def _data(seed: int, n: int = 8, d: int = 3, out: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=generator)
    y = torch.randn(n, out, dtype=torch.float64, generator=generator)
    return x, y


def _mlp(seed: int = 0, d: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((prediction - target) ** 2).mean()


def _float_leaves(tree) -> list[torch.Tensor]:
    return [
        t for t in optree.tree_leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]


class Net(nn.Module):
    """The seed's network: one scalar parameter, ``a * x**2``."""

    def __init__(self, a: float = 1.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x):
        return self.a * x**2


# ------------------------------------------------------------------ meta-gradients vs FD

META_CASES = [
    (
        "MetaSGD-momentum",
        oc.MetaSGD,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
        K,
    ),
    ("MetaSGD-nesterov", oc.MetaSGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}, K),
    ("MetaAdam", oc.MetaAdam, {"lr": 0.05}, K),
    (
        "MetaAdam-decay-eps_root",
        oc.MetaAdam,
        {"lr": 0.05, "weight_decay": 0.01, "eps_root": 1e-8},
        K,
    ),
    ("MetaAdamW", oc.MetaAdamW, {"lr": 0.05, "weight_decay": 0.1}, K),
    ("MetaAdamax", oc.MetaAdamax, {"lr": 0.05}, K),
    ("MetaAdagrad", oc.MetaAdagrad, {"lr": 0.1, "lr_decay": 0.01}, K),
    ("MetaAdadelta", oc.MetaAdadelta, {"lr": 1.0}, K),
    ("MetaRAdam", oc.MetaRAdam, {"lr": 0.05}, K),
    # RAdam is un-rectified while rho_t <= 5, i.e. for t <= 5: 7 steps reach the rectified branch.
    ("MetaRAdam-rectified", oc.MetaRAdam, {"lr": 0.05}, 7),
    (
        "MetaRMSprop-centered-momentum",
        oc.MetaRMSprop,
        {"lr": 0.01, "centered": True, "momentum": 0.9},
        K,
    ),
]


def _outer_loss(cls, kwargs, steps, scale, init=None, direction=None, eps=0.0):
    """Outer loss after ``steps`` inner steps on a loss whose input is scaled by ``scale``.

    With ``direction``, the initial parameters are moved by ``eps * direction`` first (to
    differentiate w.r.t. the initial parameters along that direction).
    """
    net = _mlp()
    if direction is not None:
        with torch.no_grad():
            for p, v in zip(net.parameters(), direction, strict=True):
                p.add_(eps * v)
    params0 = list(net.parameters())
    optimizer = cls(net, **kwargs)
    x, y = _data(1)
    x_val, y_val = _data(2)
    for _ in range(steps):
        optimizer.step(_mse(net(scale * x), y))
    return _mse(net(x_val), y_val), params0, optimizer


@pytest.mark.parametrize(
    ("cls", "kwargs", "steps"), [c[1:] for c in META_CASES], ids=[c[0] for c in META_CASES]
)
def test_meta_gradient_matches_finite_differences(cls, kwargs, steps):
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    outer, params0, _ = _outer_loss(cls, kwargs, steps, scale)
    outer.backward()

    def at(s):
        return _outer_loss(cls, kwargs, steps, torch.tensor(s, dtype=torch.float64))[0].item()

    fd = (at(1.3 + H) - at(1.3 - H)) / (2 * H)
    assert abs(fd) > 1e-6  # a meaningful check, not 0 == 0
    torch.testing.assert_close(scale.grad.item(), fd, rtol=1e-5, atol=1e-10)

    # The outer gradient also reaches the initial parameters (MAML): a directional derivative.
    generator = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, dtype=torch.float64, generator=generator) for p in params0]
    analytic = sum((p.grad * v).sum() for p, v in zip(params0, direction, strict=True)).item()
    s = torch.tensor(1.3, dtype=torch.float64)
    plus = _outer_loss(cls, kwargs, steps, s, direction=direction, eps=H)[0].item()
    minus = _outer_loss(cls, kwargs, steps, s, direction=direction, eps=-H)[0].item()
    torch.testing.assert_close(analytic, (plus - minus) / (2 * H), rtol=1e-5, atol=1e-10)


# ------------------------------------------------------------------ learning-rate hypergradient


def test_lr_hypergradient_of_one_sgd_step_on_the_seed_net():
    """a1 = a0 - lr x^2, outer = a1 x^2, so d outer / d lr = -x^4 = -16 at x = 2."""
    net, x = Net(), nn.Parameter(torch.tensor(2.0))
    lr = torch.tensor(1.0, requires_grad=True)
    optimizer = oc.MetaSGD(net, lr=lr)
    optimizer.step(net(x))
    net(x).backward()
    assert lr.grad.item() == -16.0
    assert x.grad.item() == -28.0  # the seed's meta-gradient is unchanged by a tensor lr


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (oc.MetaSGD, {"momentum": 0.9}),
        (oc.MetaSGD, {"momentum": 0.9, "nesterov": True}),
        (oc.MetaAdam, {}),
    ],
    ids=["MetaSGD-momentum", "MetaSGD-nesterov", "MetaAdam"],
)
def test_lr_hypergradient_through_k_steps_matches_finite_differences(cls, kwargs):
    lr0 = 0.05
    scale = torch.tensor(1.0, dtype=torch.float64)
    lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
    outer, _, _ = _outer_loss(cls, {"lr": lr, **kwargs}, K, scale)
    outer.backward()

    def at(value):
        return _outer_loss(cls, {"lr": value, **kwargs}, K, scale)[0].item()

    fd = (at(lr0 + H) - at(lr0 - H)) / (2 * H)
    assert abs(fd) > 1e-6
    torch.testing.assert_close(lr.grad.item(), fd, rtol=1e-5, atol=1e-10)


# ------------------------------------------------------------------ parameters without gradient

D, HIDDEN = 3, 4


def _shared_weights():
    generator = torch.Generator().manual_seed(5)
    return (
        torch.randn(HIDDEN, D, dtype=torch.float64, generator=generator),
        torch.randn(HIDDEN, dtype=torch.float64, generator=generator),
        torch.randn(HIDDEN, dtype=torch.float64, generator=generator),
    )


class Plain(nn.Module):
    """The reference: the model without the parameters whose gradient is identically zero."""

    def __init__(self):
        super().__init__()
        w1, b1, v = _shared_weights()
        self.w1, self.b1, self.v = nn.Parameter(w1), nn.Parameter(b1), nn.Parameter(v)

    def forward(self, x):
        return torch.tanh(x @ self.w1.T + self.b1) @ self.v


class WithUnused(Plain):
    """Plain plus a parameter the loss never uses (its gradient is None)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.ones(2, dtype=torch.float64))


class WithDeadUnit(Plain):
    """Plain plus a ReLU unit that is dead on every input: its three parameters get zero grads."""

    def __init__(self):
        super().__init__()
        self.w_dead = nn.Parameter(torch.full((D,), 0.1, dtype=torch.float64))
        self.b_dead = nn.Parameter(torch.tensor(-100.0, dtype=torch.float64))
        self.v_dead = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def forward(self, x):
        return super().forward(x) + torch.relu(x @ self.w_dead + self.b_dead) * self.v_dead


def _meta_run(model_cls, steps=K):
    net = model_cls()
    params0 = dict(net.named_parameters())
    scale = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    optimizer = oc.MetaAdam(net, lr=0.05)
    state0 = _float_leaves(optimizer.state_dict())
    x, y = _data(1, out=1)
    y = y.squeeze(1)
    for _ in range(steps):
        optimizer.step(_mse(net(scale * x), y))
    outer = _mse(net(x), y)
    outer.backward()
    return net, params0, scale, state0, outer


@pytest.mark.parametrize("model_cls", [WithUnused, WithDeadUnit], ids=["unused", "dead-relu"])
def test_meta_adam_with_zero_gradient_parameters_equals_the_model_without_them(model_cls):
    ref_net, ref_params, ref_scale, _, ref_outer = _meta_run(Plain)
    net, params0, scale, state0, outer = _meta_run(model_cls)

    torch.testing.assert_close(outer, ref_outer, rtol=1e-12, atol=0)
    torch.testing.assert_close(scale.grad, ref_scale.grad, rtol=1e-12, atol=0)
    for name in ref_params:
        torch.testing.assert_close(params0[name].grad, ref_params[name].grad, rtol=1e-12, atol=0)
        torch.testing.assert_close(getattr(net, name), getattr(ref_net, name), rtol=1e-12, atol=0)
    extra = [name for name in params0 if name not in ref_params]
    for name in extra:
        # The extra parameters do not move, and whatever reaches them is finite (0 or None).
        torch.testing.assert_close(getattr(net, name), params0[name], rtol=0, atol=0)
        grad = params0[name].grad
        assert grad is None or torch.count_nonzero(grad) == 0
    for moment in state0:  # initial moments (moment_requires_grad=True): finite meta-gradients
        assert moment.grad is None or torch.isfinite(moment.grad).all()


def test_unused_parameter_keeps_its_tensor():
    net, params0, _, _, _ = _meta_run(WithUnused)
    assert net.unused is params0["unused"]
    assert net.w1 is not params0["w1"] and net.w1.grad_fn is not None


# ------------------------------------------------------------------ moment_requires_grad


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (oc.MetaAdam, {"lr": 0.05}),
        (oc.MetaSGD, {"lr": 0.1, "momentum": 0.9}),
        (oc.MetaAdadelta, {}),
        (oc.MetaRAdam, {"lr": 0.05}),
        (oc.MetaAdamax, {"lr": 0.05}),
        (oc.MetaAdamW, {"lr": 0.05}),
    ],
    ids=["MetaAdam", "MetaSGD", "MetaAdadelta", "MetaRAdam", "MetaAdamax", "MetaAdamW"],
)
def test_moment_requires_grad(cls, kwargs):
    scale_grads = []
    for flag in (True, False):
        scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        net = _mlp()
        optimizer = cls(net, moment_requires_grad=flag, **kwargs)
        moments = _float_leaves(optimizer.state_dict())
        assert moments and all(m.requires_grad is flag and m.is_leaf for m in moments)
        x, y = _data(1)
        for _ in range(K):
            optimizer.step(_mse(net(scale * x), y))
        _mse(net(x), y).backward()
        if flag:
            assert all(m.grad is not None and torch.isfinite(m.grad).all() for m in moments)
            if cls is oc.MetaSGD:  # torch's first step sets the trace to g: b_0 is not used
                assert all(torch.count_nonzero(m.grad) == 0 for m in moments)
            else:
                assert any(torch.count_nonzero(m.grad) > 0 for m in moments)
        else:
            assert all(m.grad is None for m in moments)
        scale_grads.append(scale.grad)
    # Tracking the initial moments changes what gets a gradient, not the values.
    torch.testing.assert_close(scale_grads[0], scale_grads[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize(("field", "base"), [("mu", 0.0), ("nu", 1e-3)])
def test_moment_gradient_matches_finite_differences(field, base):
    """d outer / d (initial mu or nu of MetaAdam) along a direction, against FD.

    The outer loss is strongly curved in the initial moments (they are compared with
    (1 - b) g), so the FD step is smaller than elsewhere; nu starts at base > 0 so that the
    FD evaluations never see a negative second moment.
    """
    generator = torch.Generator().manual_seed(7)
    direction = [
        torch.randn(p.shape, dtype=torch.float64, generator=generator).abs()
        for p in _mlp().parameters()
    ]

    def run(eps):
        net = _mlp()
        optimizer = oc.MetaAdam(net, lr=0.05)
        ((adam_state, *_),) = optimizer.state_dict()
        moments = getattr(adam_state, field)
        with torch.no_grad():
            for m, v in zip(moments, direction, strict=True):
                m.add_((base + eps) * v)
        x, y = _data(1)
        for _ in range(K):
            optimizer.step(_mse(net(x), y))
        return _mse(net(x), y), moments

    outer, moments0 = run(0.0)
    outer.backward()
    analytic = sum((m.grad * v).sum() for m, v in zip(moments0, direction, strict=True)).item()
    h = 1e-7
    fd = (run(h)[0].item() - run(-h)[0].item()) / (2 * h)
    assert abs(fd) > 1e-6
    torch.testing.assert_close(analytic, fd, rtol=1e-5, atol=1e-10)


# ------------------------------------------------------------------ FuncOptimizer == MetaAdam


def test_func_optimizer_adam_steps_equal_meta_adam():
    x, y = _data(1)
    x_val, y_val = _data(2)

    scale_meta = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    net = _mlp()
    params0_meta = list(net.parameters())
    meta = oc.MetaAdam(net, lr=0.05)
    for _ in range(K):
        meta.step(_mse(net(scale_meta * x), y))
    final_meta = list(net.parameters())
    _mse(net(x_val), y_val).backward()

    scale_func = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    model = _mlp()
    names = [n for n, _ in model.named_parameters()]
    params0_func = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    func = oc.FuncOptimizer(oc.adam(lr=0.05, moment_requires_grad=True))

    def forward(params, inputs):
        return functional_call(model, dict(zip(names, params, strict=True)), (inputs,))

    params = params0_func
    for _ in range(K):
        params = func.step(_mse(forward(params, scale_func * x), y), params)
    _mse(forward(params, x_val), y_val).backward()

    for a, b in zip(final_meta, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(scale_meta.grad, scale_func.grad, rtol=1e-12, atol=0)
    for a, b in zip(params0_meta, params0_func, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ memory


def _live_tensors() -> int:
    gc.collect()
    # type(o) rather than isinstance(o, ...): some objects warn when asked for __class__.
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_meta_training_loop_memory_is_steady():
    """1000 outer iterations that carry the adapted network and moments into the next one.

    Each iteration takes K inner MetaAdam steps, an outer step on the meta-parameter, then
    saves the state (extract_state_dict), cuts it from the graph (stop_gradient) and puts it
    back (recover_state_dict). Without the cut every iteration's graph would hang off the next.
    """
    net = _mlp(d=2)
    x, y = _data(1, d=2)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    outer_optimizer = torch.optim.SGD([scale], lr=1e-3)
    inner = oc.MetaAdam(net, lr=0.01)
    first_step_tensor = None
    counts = {}
    for iteration in range(1, 1001):
        for k in range(K):
            inner.step(_mse(net(scale * x), y))
            if iteration == 1 and k == 0:
                first_step_tensor = weakref.ref(net[0].weight)
                assert first_step_tensor().grad_fn is not None
        outer = _mse(net(x), y)
        outer_optimizer.zero_grad()
        outer.backward()
        outer_optimizer.step()
        net_state = oc.extract_state_dict(net, by="reference")
        optim_state = oc.extract_state_dict(inner, by="reference")
        oc.stop_gradient(net_state)
        oc.stop_gradient(optim_state)
        oc.recover_state_dict(net, net_state)
        oc.recover_state_dict(inner, optim_state)
        del outer, net_state, optim_state
        if iteration == 2:
            gc.collect()
            assert first_step_tensor() is None  # iteration 1's inner tensors are gone
        if iteration in (50, 1000):
            counts[iteration] = _live_tensors()
    assert counts[1000] <= counts[50], counts
    assert all(p.is_leaf and p.requires_grad for p in net.parameters())
    assert all(t.is_leaf for t in _float_leaves(inner.state_dict()))


def test_without_stop_gradient_the_second_outer_backward_fails():
    """The seed's known issue 2, which the loop above avoids with stop_gradient."""
    net = _mlp()
    x, y = _data(1)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    inner = oc.MetaSGD(net, lr=0.1)
    inner.step(_mse(net(scale * x), y))
    _mse(net(x), y).backward()
    inner.step(_mse(net(scale * x), y))
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        _mse(net(x), y).backward()


def _rule_nodes(roots) -> list:
    """The fused-step autograd nodes reachable from ``roots``, nearest first."""
    seen, found = set(), []
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        fn = stack.pop(0)
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        if type(fn).__name__ == "FusedStepBackward":
            found.append(fn)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def test_unrolled_steps_save_only_their_inputs():
    """Each fused step saves its inputs (grads, moments, params, scalars), no intermediate.

    The step adds the update to the parameters inside the same kernel, so the parameters are
    inputs too (saving them costs nothing: the graph holds them anyway).
    """
    net = _mlp()
    x, y = _data(1)
    optimizer = oc.MetaAdam(net, lr=0.05)
    n_leaves = len(list(net.parameters()))
    states = []
    for _ in range(K):
        states.append(optimizer.state_dict()[0][0])  # the ScaleByAdamState before the step
        optimizer.step(_mse(net(x), y))
    nodes = _rule_nodes(list(net.parameters()))
    assert len(nodes) == K  # one fused node per step (scale_by_adam + scale_by_neg_lr)
    for node, state in zip(reversed(nodes), states, strict=True):
        saved = node.saved_tensors
        assert len(saved) == len(node.next_functions)  # one saved tensor per input, no more
        grads, mu, nu, params, scalars = (
            saved[:n_leaves],
            saved[n_leaves : 2 * n_leaves],
            saved[2 * n_leaves : 3 * n_leaves],
            saved[3 * n_leaves : 4 * n_leaves],
            saved[4 * n_leaves :],
        )
        for got, expected in zip(mu + nu, list(state.mu) + list(state.nu), strict=True):
            assert got.data_ptr() == expected.data_ptr() and got.shape == expected.shape
        assert [g.shape for g in grads] == [p.shape for p in net.parameters()]
        assert [p.shape for p in params] == [p.shape for p in net.parameters()]
        assert all(s.ndim == 0 for s in scalars)  # hyper-parameters and count
    total = sum(len(node.saved_tensors) for node in nodes)
    assert total == K * len(nodes[0].saved_tensors)


# ------------------------------------------------------------------ bad input


def _snapshot(module: nn.Module, optimizer=None):
    containers = [(m._parameters, dict(m._parameters)) for m in module.modules()]
    values = [p.detach().clone() for p in module.parameters()]
    state = optimizer.state_dict() if optimizer is not None else None
    return containers, values, state


def _assert_unchanged(module: nn.Module, snapshot, optimizer=None):
    containers, values, state = snapshot
    for live, saved in containers:
        assert live.keys() == saved.keys()
        assert all(live[k] is saved[k] for k in saved)
    for p, v in zip(module.parameters(), values, strict=True):
        assert torch.equal(p.detach(), v)
    if optimizer is not None:
        assert all(a is b for a, b in zip(optimizer.state_dict(), state, strict=True))


def _prepared():
    net = _mlp()
    optimizer = oc.MetaAdam(net, lr=0.05)
    x, y = _data(1)
    optimizer.step(_mse(net(x), y))  # non-leaf parameters, a non-trivial state
    return net, optimizer, x, y


def test_step_on_a_non_scalar_loss():
    net, optimizer, x, y = _prepared()
    snapshot = _snapshot(net, optimizer)
    with pytest.raises(ValueError, match=r"loss must be a scalar tensor, got \(8, 1\).*mean"):
        optimizer.step((net(x) - y) ** 2)
    with pytest.raises(ValueError, match=r"loss must be a scalar tensor, got float"):
        optimizer.step(1.0)
    _assert_unchanged(net, snapshot, optimizer)


def test_step_on_a_loss_that_does_not_require_grad():
    net, optimizer, x, y = _prepared()
    snapshot = _snapshot(net, optimizer)
    with torch.no_grad():
        loss = _mse(net(x), y)
    with pytest.raises(ValueError, match=r"loss does not require grad.*no_grad"):
        optimizer.step(loss)
    with pytest.raises(ValueError, match=r"loss does not require grad"):
        optimizer.step(_mse(net(x), y).detach())
    _assert_unchanged(net, snapshot, optimizer)


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Linear(2, 1).double().requires_grad_(False), lambda: nn.ReLU()],
    ids=["frozen", "no-parameters"],
)
def test_module_without_trainable_parameters(make):
    module = make()
    snapshot = _snapshot(module)
    with pytest.raises(ValueError, match=r"has no parameter that requires grad"):
        oc.MetaAdam(module, lr=0.1)
    _assert_unchanged(module, snapshot)
    assert not any(p.requires_grad for p in module.parameters())


def test_recover_a_module_state_of_another_structure():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)).double()
    other_keys = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1, bias=False)).double()
    other_count = nn.Sequential(nn.Linear(2, 3)).double()
    snapshot = _snapshot(net)
    # The first dict of other_keys fits; it must not be written before the second is refused.
    with pytest.raises(
        ValueError,
        match=r"state.params\[1\] has keys \['weight'\] but the "
        r"module has \['bias', 'weight'\]",
    ):
        oc.recover_state_dict(net, oc.extract_state_dict(other_keys))
    with pytest.raises(ValueError, match=r"state.params holds 1 dicts but the module has 2"):
        oc.recover_state_dict(net, oc.extract_state_dict(other_count))
    with pytest.raises(TypeError, match=r"state must be the ModuleState"):
        oc.recover_state_dict(net, oc.extract_state_dict(oc.MetaSGD(net, lr=0.1)))
    _assert_unchanged(net, snapshot)


def test_recover_a_meta_optimizer_state_of_another_structure():
    net, optimizer, _, _ = _prepared()
    snapshot = _snapshot(net, optimizer)
    sgd_state = oc.extract_state_dict(oc.MetaSGD(_mlp(), lr=0.1))
    with pytest.raises(
        ValueError,
        match=r"member 0: this optimizer's state is a ScaleByAdamState\(mu, nu, count\) but the "
        r"state_dict holds a EmptyState\(\) \(a state of another optimizer",
    ):
        oc.recover_state_dict(optimizer, sgd_state)
    smaller = oc.extract_state_dict(oc.MetaAdam(nn.Linear(3, 1).double(), lr=0.1))
    with pytest.raises(
        ValueError,
        match=r"ScaleByAdamState\.mu: 2 leaves in the state_dict, but this optimizer has 4",
    ):
        oc.recover_state_dict(optimizer, smaller)
    with pytest.raises(ValueError, match=r"expected a tuple of 1 group state"):
        oc.recover_state_dict(optimizer, oc.extract_state_dict(net))
    _assert_unchanged(net, snapshot, optimizer)


@pytest.mark.parametrize("by", ["shallow", "REFERENCE", ""])
def test_unknown_by(by):
    net, optimizer, _, _ = _prepared()
    snapshot = _snapshot(net, optimizer)
    message = rf"by={by!r} is not a copy mode: expected one of reference, ref, copy"
    for target in (net, optimizer):
        with pytest.raises(ValueError, match=message):
            oc.extract_state_dict(target, by=by)
    _assert_unchanged(net, snapshot, optimizer)


# ------------------------------------------------------------------ found in review


def test_tied_weights_stay_tied_and_match_the_functional_reference():
    torch.manual_seed(0)
    enc = nn.Linear(3, 3, bias=False).double()
    dec = nn.Linear(3, 3, bias=False).double()
    dec.weight = enc.weight
    net = nn.Sequential(enc, nn.Tanh(), dec)
    w0 = enc.weight
    x = torch.randn(4, 3, dtype=torch.float64)
    optim = oc.MetaSGD(net, lr=0.1, backend="eager")
    for _ in range(2):
        optim.step(((net(x) - x) ** 2).mean())
    assert net[0].weight is net[2].weight
    loss = ((net(x) - x) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, w0)

    w = w0.detach().clone().requires_grad_()
    current = w
    f = lambda v: ((torch.tanh(x @ v.t()) @ v.t() - x) ** 2).mean()  # noqa: E731
    for _ in range(2):
        (g,) = torch.autograd.grad(f(current), current, create_graph=True)
        current = current - 0.1 * g
    expected_loss = f(current)
    (expected,) = torch.autograd.grad(expected_loss, w)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_meta_optimizer_refuses_the_state_of_another_model():
    small = oc.MetaAdam(nn.Linear(1, 1), lr=0.1, backend="eager")
    large = oc.MetaAdam(nn.Linear(3, 1), lr=0.1, backend="eager")
    with pytest.raises(
        ValueError,
        match=r"mu\[0\]: shape \(1, 1\) in the state_dict, but this optimizer's is \(1, 3\)",
    ):
        large.load_state_dict(small.state_dict())


def test_step_with_a_stale_loss_is_an_error_and_changes_nothing():
    net = nn.Linear(3, 1)
    optim = oc.MetaSGD(net, lr=0.1, backend="eager")
    loss = net(torch.ones(2, 3)).sum()
    optim.step(loss)
    before = [p for p in net.parameters()]
    with pytest.raises(ValueError, match=r"loss does not depend on any parameter"):
        optim.step(loss)  # computed before the last step
    assert all(a is b for a, b in zip(before, net.parameters(), strict=True))
