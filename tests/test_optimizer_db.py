"""Generic tests over the optimizer registry, driven by the test database (``optimizer_db.py``).

Every registered optimizer: its alias against each reference over 50 float64 steps (torch.optim,
or optax in float64 jax when installed), its torch-style class against its alias, its Meta class's
meta-gradient w.r.t. the data against float64 central finite differences (or exactly zero where
documented), no NaN with exactly-zero gradients, its error inputs; a compiled subset on inductor;
and a rule declared here, in a test module, appearing as alias, class and Meta class.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from optimizer_db import DB, Entry
from torch import nn

import optcompile as oc
from optcompile import sym
from optcompile.registry import optimizer, optimizers, unregister

STEPS = 50
H = 1e-5  # finite-difference step (float64)
INFOS = optimizers()
BUILTIN = [name for name, info in INFOS.items() if info.module.startswith("optcompile.")]


# The eager backend is the oracle here; the compiled subset names its backend.
pytestmark = pytest.mark.usefixtures("eager_backend")


def test_database_covers_every_registered_optimizer():
    assert set(DB) == set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_flags_exist_and_are_exercised(name):
    entry: Entry = DB[name]
    signature = INFOS[name].signature
    for flag in entry.flags:
        assert flag in signature.parameters, flag
        default = signature.parameters[flag].default
        assert any(r.kwargs.get(flag, default) != default for r in entry.references), flag


# ------------------------------------------------------------------ against the references


def _problem():
    """Parameters, curvatures and centres (float64 tensors) of a non-quadratic problem."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,), (), (2, 2, 2)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    h = [0.5 + 1.5 * torch.rand(s, generator=gen, dtype=torch.float64) for s in shapes]
    c = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    return params, h, c


def _grads(params, h, c, sin, sign):
    """The gradient of sum(h/2 (p - c)^2 + 0.1 cos(3 p)), negated when ``sign`` is -1."""
    return [
        sign * (hh * (p - cc) - 0.3 * sin(3 * p)) for p, hh, cc in zip(params, h, c, strict=True)
    ]


def _run_alias(name, kwargs, sign):
    params, h, c = _problem()
    tx = INFOS[name].alias(**kwargs)
    state = tx.init(params)
    for _ in range(STEPS):
        grads = _grads(params, h, c, torch.sin, sign)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        params = oc.apply_updates(params, updates, inplace=False)
    return params


def _run_torch(make, sign):
    params, h, c = _problem()
    # torch.optim keeps scalar state (NAdam's mu_product, step counts) in the default dtype.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        optimizer = make(params)
        for _ in range(STEPS):
            for p, g in zip(params, _grads(params, h, c, torch.sin, sign), strict=True):
                p.grad = g
            optimizer.step()
    finally:
        torch.set_default_dtype(previous)
    return params


def _run_optax(make):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    params, h, c = (([jnp.asarray(t.numpy()) for t in ts]) for ts in _problem())
    tx = make(optax)

    @jax.jit
    def step(params, state):
        grads = _grads(params, h, c, jnp.sin, 1.0)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(STEPS):
        params, state = step(params, state)
    return [torch.tensor(np.array(p)) for p in params]


def _run_closed_form(step):
    params, h, c = _problem()
    states = [{} for _ in params]
    for t in range(1, STEPS + 1):
        grads = _grads(params, h, c, torch.sin, 1.0)
        params = [step(p, g, s, t) for p, g, s in zip(params, grads, states, strict=True)]
    return params


REFERENCES = [
    pytest.param(name, ref, kind, id=f"{name}-{ref.id}-{kind}")
    for name in BUILTIN
    for ref in DB[name].references
    for kind in ("torch", "optax", "closed_form")
    if getattr(ref, kind) is not None
]


def test_every_optimizer_has_a_reference_that_needs_no_optional_package():
    for name in BUILTIN:
        assert any(r.torch or r.closed_form for r in DB[name].references), name


@pytest.mark.parametrize("name, ref, kind", REFERENCES)
def test_alias_matches_reference_over_50_float64_steps(name, ref, kind):
    if kind == "torch":
        expected = _run_torch(ref.torch, ref.sign)
    elif kind == "optax":
        expected = _run_optax(ref.optax)
    else:
        expected = _run_closed_form(ref.closed_form)
    actual = _run_alias(name, ref.kwargs, ref.sign)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == torch.float64 and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", BUILTIN)
def test_class_equals_alias(name):
    ref = DB[name].references[0]
    info = INFOS[name]
    cls = getattr(oc, info.classes[0])
    params, h, c = _problem()
    leaves = [p.clone().requires_grad_() for p in params]
    opt = cls(leaves, **ref.kwargs)
    for _ in range(5):
        opt.zero_grad()
        loss = sum(
            (hh / 2 * (p - cc) ** 2 + 0.1 * torch.cos(3 * p)).sum()
            for p, hh, cc in zip(leaves, h, c, strict=True)
        )
        loss.backward()
        opt.step()
    # The alias with the class's arguments (a class may have its own defaults, e.g. Adamax's).
    bound = inspect.signature(cls).bind(leaves, **ref.kwargs)
    bound.apply_defaults()
    tx = info.alias(**{k: v for k, v in list(bound.arguments.items())[1:]})
    state = tx.init(params)
    for _ in range(5):
        updates, state = tx.update(_grads(params, h, c, torch.sin, 1.0), state, params=params)
        params = oc.apply_updates(params, updates)
    for a, e in zip(leaves, params, strict=True):
        torch.testing.assert_close(a.detach(), e, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ meta-gradients


def _outer_loss(meta_cls, kwargs, steps, scale, backend=None):
    """Outer loss after ``steps`` inner steps on a loss whose data is scaled by ``scale``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    extra = {} if backend is None else {"backend": backend}
    opt = meta_cls(net, **kwargs, **extra)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randn(8, n, dtype=torch.float64, generator=gen) for n in (3, 1))
    x_val, y_val = (torch.randn(8, n, dtype=torch.float64, generator=gen) for n in (3, 1))
    for _ in range(steps):
        opt.step(((net(scale * x) - y) ** 2).mean())
    return ((net(x_val) - y_val) ** 2).mean()


META = [
    pytest.param(name, meta, id=f"{name}-{i}")
    for name in BUILTIN
    for i, meta in enumerate(DB[name].metas)
]


@pytest.mark.parametrize("name, meta", META)
def test_meta_gradient_wrt_data_matches_finite_differences_or_is_zero(name, meta):
    meta_cls = getattr(oc, INFOS[name].meta_classes[0])
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    _outer_loss(meta_cls, meta.kwargs, meta.steps, scale).backward()
    grad = scale.grad.item() if scale.grad is not None else 0.0
    assert math.isfinite(grad)
    if meta.zero:
        assert grad == 0.0  # a sign in the path: zero by convention (see the docstring)
        return
    if meta.straight_through:
        assert grad != 0.0  # the straight-through estimator: biased, but it flows
        return

    def at(s):
        return _outer_loss(meta_cls, meta.kwargs, meta.steps, torch.tensor(s, dtype=torch.float64))

    fd = ((at(1.3 + H) - at(1.3 - H)) / (2 * H)).item()
    assert abs(fd) > 1e-6  # a meaningful check, not 0 == 0
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("name", BUILTIN)
def test_no_nan_with_exactly_zero_gradients(name):
    """Zero gradients for 3 steps: finite updates and finite gradients w.r.t. params and lr."""
    kwargs = dict(DB[name].references[0].kwargs)
    lr = torch.tensor(float(kwargs.pop("lr", 0.01)), dtype=torch.float64, requires_grad=True)
    params = [
        torch.randn(3, dtype=torch.float64, requires_grad=True),
        torch.zeros((), dtype=torch.float64, requires_grad=True),
    ]
    tx = INFOS[name].alias(lr, **kwargs) if name == "sgd" else INFOS[name].alias(lr=lr, **kwargs)
    state = tx.init(params)
    current = params
    for _ in range(3):
        grads = [torch.zeros_like(p) * p for p in current]  # exactly zero, still on the graph
        updates, state = tx.update(grads, state, params=current, inplace=False)
        assert all(torch.isfinite(u).all() for u in updates)
        current = oc.apply_updates(current, updates, inplace=False)
    sum(p.sum() for p in current).backward()
    for t in (*params, lr):
        assert t.grad is None or torch.isfinite(t.grad).all()


ERRORS = [
    pytest.param(name, kwargs, error, match, id=f"{name}-{i}")
    for name in BUILTIN
    for i, (kwargs, error, match) in enumerate(DB[name].errors)
]


@pytest.mark.parametrize("name, kwargs, error, match", ERRORS)
def test_error_inputs_raise_at_construction(name, kwargs, error, match):
    args = {"lr": 0.1} if name == "sgd" else {}
    with pytest.raises(error, match=match):
        INFOS[name].alias(**{**args, **kwargs})


@pytest.mark.parametrize("name", [n for n in BUILTIN if DB[n].inductor])
def test_inductor_meta_gradient_equals_eager(name):
    meta = DB[name].metas[0]
    meta_cls = getattr(oc, INFOS[name].meta_classes[0])
    grads = []
    for backend in ("eager", "inductor"):
        scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
        loss = _outer_loss(meta_cls, meta.kwargs, 2, scale, backend=backend)
        loss.backward()
        grads.append((loss.item(), 0.0 if scale.grad is None else scale.grad.item()))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ one file adds an optimizer


@oc.rule(state=("mu",), domains={"decay": "[0, 1)"})
def scale_by_test_momentum(g, mu, *, decay=0.5):
    r"""A test rule: :math:`m_t = \delta m_{t-1} + g`, :math:`u = m_t`."""
    mu = decay * mu + g
    return mu, (mu,)


def test_an_optimizer_declared_in_a_test_module_appears_as_alias_class_and_meta_class():
    from optcompile.assemble import preconditioned

    @optimizer(classes=("TestMomentum",), domains={"decay": "[0, 1)"})
    def test_momentum(lr=0.1, decay=0.5, weight_decay=0.0, *, backend=None):
        """SGD with a test momentum."""
        return preconditioned(
            scale_by_test_momentum, lr=lr, weight_decay=weight_decay, backend=backend, decay=decay
        )

    try:
        assert oc.test_momentum is oc.alias.test_momentum is test_momentum
        assert oc.TestMomentum is oc.optim.TestMomentum
        assert oc.MetaTestMomentum is oc.optim.meta.MetaTestMomentum
        assert {"test_momentum", "TestMomentum", "MetaTestMomentum"} <= set(oc.__all__)
        params = inspect.signature(oc.TestMomentum).parameters
        assert list(params) == ["params", "lr", "decay", "weight_decay", "backend"]
        with pytest.raises(oc.HyperparameterError, match=r"^decay=1\.0 "):
            oc.test_momentum(decay=1.0)
        # Two steps of u = -lr * m_t on a one-element parameter: m = 1, then 1.5.
        p = torch.zeros(1, requires_grad=True)
        opt = oc.TestMomentum([p], lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            (p.sum() * 1.0).backward()
            opt.step()
        torch.testing.assert_close(p.detach(), torch.tensor([-0.25]))
        net = nn.Linear(1, 1)
        oc.MetaTestMomentum(net, lr=0.1).step(net(torch.ones(1, 1)).sum())
    finally:
        unregister("test_momentum")
    assert not hasattr(oc, "TestMomentum") and "test_momentum" not in oc.alias.__all__
    _ = sym  # the rule language, as a rule file imports it
