"""torch.func through optcompile's steps: vmap over tasks, grad, jacrev, jacfwd, jvp, hvp.

The references are a Python loop over tasks with ``torch.autograd`` (vmap), ``torch.autograd``
(``func.grad``) and central finite differences in float64 (jacrev, jacfwd, jvp, hvp). The fused
step must be exact under every transform: no silent first-order result, no NaN where a
parameter's gradient is exactly zero.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import optcompile
from optcompile.lowering import backends

TASKS, STEPS = 4, 3
ALIASES = {
    "sgd": lambda lr, b: optcompile.sgd(lr, momentum=0.9, nesterov=True, backend=b),
    "adam": lambda lr, b: optcompile.adam(lr, backend=b),
    "adamw": lambda lr, b: optcompile.adamw(lr, weight_decay=0.1, backend=b),
    "adamax": lambda lr, b: optcompile.adamax(lr, backend=b),
    "adagrad": lambda lr, b: optcompile.adagrad(lr, lr_decay=0.01, backend=b),
    "adadelta": lambda lr, b: optcompile.adadelta(lr * 10, backend=b),
    "radam": lambda lr, b: optcompile.radam(lr, backend=b),
    "rmsprop": lambda lr, b: optcompile.rmsprop(lr, momentum=0.5, centered=True, backend=b),
}
TOL = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def _meta_params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    # A parameter the loss multiplies by zero: its gradient is exactly 0 at every step, where
    # Adam's sqrt(nu) sits at 0 and a textbook derivative is inf * 0 = NaN.
    params["dead"] = torch.randn(3, dtype=torch.float64)
    return params


def _data():
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(TASKS, 6, 4, generator=generator, dtype=torch.float64)
    ys = torch.randint(0, 3, (TASKS, 6), generator=generator)
    return xs, ys


def _loss(net, params, x, y):
    weights = {k: v for k, v in params.items() if k != "dead"}
    logits = functional_call(net, weights, (x,))
    return F.cross_entropy(logits, y) + 0.0 * params["dead"].sum()


def _adapt_and_evaluate(net, make_tx, params, x, y):
    """Inner loop (torch.func.grad + the optimizer), then the loss of the adapted params."""
    tx = make_tx()
    state = tx.init(params)
    for _ in range(STEPS):
        grads = grad(lambda p: _loss(net, p, x, y))(params)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        params = optcompile.apply_updates(params, updates, inplace=False)
    return _loss(net, params, x, y)


def _vmap_and_loop(name: str, backend: str):
    net, (xs, ys) = _net(), _data()
    meta = {k: v.requires_grad_() for k, v in _meta_params(net).items()}
    vmapped = vmap(
        lambda x, y: _adapt_and_evaluate(net, lambda: ALIASES[name](0.1, backend), meta, x, y)
    )(xs, ys).mean()
    got = torch.autograd.grad(vmapped, list(meta.values()))
    looped = (
        sum(
            _adapt_and_evaluate(net, lambda: ALIASES[name](0.1, "eager"), meta, xs[i], ys[i])
            for i in range(TASKS)
        )
        / TASKS
    )
    want = torch.autograd.grad(looped, list(meta.values()))
    return got, want


@pytest.mark.parametrize("name", ALIASES)
def test_vmap_over_tasks_equals_a_loop_eager(name):
    got, want = _vmap_and_loop(name, "eager")
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **TOL)
    assert got[-1].abs().sum() == 0  # the dead parameter: exactly zero, not NaN


def _inductor_reason() -> str | None:
    kernel = optcompile.transform.scale(1.0).kernel
    return backends.get_backend("inductor").supports(kernel, torch.device("cpu"))


# Three graphs per alias (forward, two VJP variants) at ~1-3 s each in an empty cache: four
# aliases that between them use every head of the rule language (momentum and nesterov, Adam's
# sqrt and bias corrections, a centred RMSprop, RAdam's where). tests/test_backends_agree.py
# checks every alias on Inductor against eager outside vmap.
@pytest.mark.compile
@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "radam"])
def test_vmap_over_tasks_equals_a_loop_inductor(name):
    if (reason := _inductor_reason()) is not None:
        pytest.skip(f"Inductor is not available here: {reason}")
    before = optcompile.stats()["inductor"]["steps"]
    got, want = _vmap_and_loop(name, "inductor")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    assert optcompile.stats()["inductor"]["steps"] > before  # one compiled call for all tasks


def _skip_without_native() -> None:
    from optcompile.lowering.backends import native_ops

    if not native_ops.is_available(torch.device("cpu")):
        pytest.skip("the native Adam extension is not available here")


def test_vmap_over_tasks_equals_a_loop_native():
    _skip_without_native()
    got, want = _vmap_and_loop("adam", "native")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_vmap_runs_one_kernel_call_for_all_tasks(eager_backend):
    net, (xs, ys) = _net(), _data()
    meta = _meta_params(net)
    optcompile.reset_stats()
    vmap(lambda x, y: _adapt_and_evaluate(net, lambda: optcompile.adam(0.1), meta, x, y))(xs, ys)
    assert optcompile.stats()["eager"]["steps"] == STEPS  # not STEPS * TASKS


@pytest.mark.parametrize("backend", ["eager", "native"])
def test_per_task_learning_rates_under_vmap(backend):
    if backend == "native":
        _skip_without_native()  # it runs once per task: its kernels take numbers, not tensors
    net, (xs, ys) = _net(), _data()
    meta = _meta_params(net)
    lrs = torch.tensor([0.01, 0.02, 0.05, 0.1], dtype=torch.float64)

    def task(lr, x, y):
        return _adapt_and_evaluate(net, lambda: optcompile.adam(lr, backend=backend), meta, x, y)

    torch.testing.assert_close(
        vmap(task)(lrs, xs, ys), torch.stack([task(lrs[i], xs[i], ys[i]) for i in range(TASKS)])
    )
    # Hypergradients per task: d loss_i / d lr_i under vmap(grad) equal the loop's.
    torch.testing.assert_close(
        vmap(grad(task))(lrs, xs, ys),
        torch.stack([grad(task)(lrs[i], xs[i], ys[i]) for i in range(TASKS)]),
        **TOL,
    )


def test_func_grad_of_a_meta_objective_equals_autograd():
    net, (xs, ys) = _net(), _data()
    meta = _meta_params(net)

    def objective(p):
        return _adapt_and_evaluate(net, lambda: optcompile.adam(0.1), p, xs[0], ys[0])

    got = grad(objective)(meta)
    leaves = {k: v.clone().requires_grad_() for k, v in meta.items()}
    want = torch.autograd.grad(objective(leaves), list(leaves.values()))
    for k, w in zip(meta, want, strict=True):
        torch.testing.assert_close(got[k], w, **TOL)


def _two_step_unroll(x: torch.Tensor, lr: float | torch.Tensor = 0.1) -> torch.Tensor:
    """Parameters after two Adam steps on a quartic, as a function of the initial ones."""
    tx = optcompile.adam(lr)
    state = tx.init(x)

    def loss(p):
        return ((p**2).sum() - 1.0) ** 2 + (p**3).sum()

    for _ in range(2):
        updates, state = tx.update(grad(loss)(x), state, inplace=False)
        x = optcompile.apply_updates(x, updates, inplace=False)
    return x


def _central_jacobian(f, x, h=1e-6):
    columns = []
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = h
        columns.append((f(x + e) - f(x - e)) / (2 * h))
    return torch.stack(columns, dim=-1)


X0 = torch.tensor([0.3, -0.7, 1.2, 0.05], dtype=torch.float64)


@pytest.mark.parametrize("transform", [jacrev, jacfwd], ids=["jacrev", "jacfwd"])
def test_jacobian_of_a_two_step_unroll_matches_finite_differences(transform):
    got = transform(_two_step_unroll)(X0)
    torch.testing.assert_close(got, _central_jacobian(_two_step_unroll, X0), rtol=1e-6, atol=1e-7)


def test_jvp_matches_finite_differences():
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    _, tangent = jvp(_two_step_unroll, (X0,), (v,))
    h = 1e-6
    fd = (_two_step_unroll(X0 + h * v) - _two_step_unroll(X0 - h * v)) / (2 * h)
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-7)


def test_jacfwd_with_respect_to_the_learning_rate():
    lr = torch.tensor(0.1, dtype=torch.float64)
    got = jacfwd(lambda r: _two_step_unroll(X0, r))(lr)
    h = 1e-6
    fd = (_two_step_unroll(X0, lr + h) - _two_step_unroll(X0, lr - h)) / (2 * h)
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(jacrev(lambda r: _two_step_unroll(X0, r))(lr), got, **TOL)


def test_forward_mode_is_finite_at_a_zero_gradient():
    """jvp through Adam where g = 0: the safe sqrt derivative (0 at 0) holds in forward mode."""
    tx = optcompile.adam(1e-3)
    p = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([0.0, 0.5], dtype=torch.float64)

    def step(g):
        updates, _ = tx.update(g, tx.init(p), inplace=False)
        return updates

    _, tangent = jvp(step, (g,), (torch.ones_like(g),))
    assert torch.isfinite(tangent).all()
    torch.testing.assert_close(tangent, jacrev(step)(g).sum(-1), **TOL)


def test_hessian_vector_product_of_a_meta_objective():
    """grad of grad: d/dx <grad meta(x), v> against finite differences of grad meta."""

    def meta(x):
        return (_two_step_unroll(x) ** 2).sum()

    v = torch.tensor([0.5, 1.0, -1.0, 2.0], dtype=torch.float64)
    hvp = grad(lambda x: torch.dot(grad(meta)(x), v))(X0)
    h = 1e-5
    fd = (grad(meta)(X0 + h * v) - grad(meta)(X0 - h * v)) / (2 * h)
    torch.testing.assert_close(hvp, fd, rtol=1e-5, atol=1e-6)


def test_moments_can_require_grad_inside_vmap():
    net, (xs, ys) = _net(), _data()
    meta = _meta_params(net)

    def task(x, y):
        tx = optcompile.adam(0.1, moment_requires_grad=True)
        state = tx.init(meta)
        grads = grad(lambda p: _loss(net, p, x, y))(meta)
        updates, state = tx.update(grads, state, inplace=False)
        return _loss(net, optcompile.apply_updates(meta, updates, inplace=False), x, y)

    torch.testing.assert_close(
        vmap(task)(xs, ys), torch.stack([task(xs[i], ys[i]) for i in range(TASKS)]), **TOL
    )


def test_initial_moments_made_inside_vmap_get_meta_gradients():
    """moment_requires_grad inside vmap: the moments are outer leaves; .grad sums the tasks."""
    net, (xs, ys) = _net(), _data()
    meta = _meta_params(net)
    made = []

    def task(x, y):
        tx = optcompile.adam(0.1, moment_requires_grad=True)
        state = tx.init(meta)
        made.append(state)
        grads = grad(lambda p: _loss(net, p, x, y))(meta)
        updates, state = tx.update(grads, state, inplace=False)
        return _loss(net, optcompile.apply_updates(meta, updates, inplace=False), x, y)

    vmap(task)(xs, ys).sum().backward()
    mu = made[0][0].mu[0]
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    per_task = []
    for i in range(TASKS):
        made.clear()
        task(xs[i], ys[i]).backward()
        per_task.append(made[0][0].mu[0].grad)
    torch.testing.assert_close(mu.grad, sum(per_task), **TOL)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_meta_optimizer_step_without_grad_mode_records_no_graph(mode):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    reference = torch.nn.Linear(3, 1).double()
    reference.load_state_dict(net.state_dict())
    x = torch.randn(5, 3, dtype=torch.float64)
    optimizer = optcompile.MetaAdam(net, lr=0.1)
    expected = optcompile.MetaAdam(reference, lr=0.1)
    expected.step(reference(x).pow(2).mean())
    loss = net(x).pow(2).mean()
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        optimizer.step(loss)
    assert net.weight.grad_fn is None and net.weight.requires_grad  # a leaf again
    torch.testing.assert_close(net.weight, reference.weight.detach(), **TOL)
    (state,) = optimizer.state_dict()
    assert int(state[0].count[0]) == 1  # the state advanced
    assert all(t.grad_fn is None for t in state[0].mu)


def test_functional_update_under_no_grad_records_no_graph():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    tx = optcompile.adam(0.1)
    state = tx.init(p)
    g = (p**2).sum()
    (dp,) = torch.autograd.grad(g, [p], create_graph=True)
    with torch.no_grad():
        updates, state = tx.update(dp, state, inplace=False)
    adam_state = state[0]
    assert updates.grad_fn is None and adam_state.mu[0].grad_fn is None
    assert int(adam_state.count[0]) == 1


def test_meta_optimizer_inside_vmap_is_a_clear_error():
    net, (xs, ys) = _net(), _data()

    def task(x, y):
        optimizer = optcompile.MetaSGD(net, lr=0.1)
        optimizer.step(F.cross_entropy(net(x), y))
        return F.cross_entropy(net(x), y)

    with pytest.raises(RuntimeError, match=r"MetaSGD\.step.*torch\.func.*functional"):
        vmap(task)(xs, ys)


def test_the_maml_vmap_example_matches_its_loop():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "maml_vmap.py"
    spec = importlib.util.spec_from_file_location("maml_vmap", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    net = example.make_net().double()
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    data = tuple(d.double() for d in example.sample_tasks())
    batched = example.meta_gradient_vmap(net, params, data)
    looped = example.meta_gradient_loop(net, params, data)
    for a, b in zip(batched, looped, strict=True):
        torch.testing.assert_close(a, b, **TOL)


# ------------------------------------------------------------------ found in review


def test_func_optimizer_takes_any_pytree_and_returns_the_same_structure():
    w = torch.randn(3, requires_grad=True)
    b = torch.randn((), requires_grad=True)
    optim = optcompile.FuncOptimizer(optcompile.sgd(0.1, backend="eager"))
    new = optim.step((w**2).sum() + b**2, {"w": w, "b": b})
    assert set(new) == {"w", "b"}
    torch.testing.assert_close(new["w"], w - 0.2 * w)
    torch.testing.assert_close(new["b"], b - 0.2 * b)
