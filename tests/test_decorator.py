"""``@optcompile``: the backend inside a decorated loop, first-order steps, the first-call note."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import optcompile
from optcompile import optcompile as optcompile_decorator


def _problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    return net, x, y, scale


def _inner_loop(net, optim, x, y, scale, steps=3):
    for _ in range(steps):
        optim.step(((net(scale * x) - y) ** 2).mean())
    return ((net(x) - y) ** 2).mean()


def _meta_gradient(loop):
    net, x, y, scale = _problem()
    optim = optcompile.MetaAdam(net, lr=0.05)
    outer = loop(net, optim, x, y, scale)
    initial = [p for p in optcompile.extract_state_dict(net).params[0].values()]
    return torch.autograd.grad(outer, [scale], allow_unused=True)[0], outer.detach(), initial


def test_decorated_loop_runs_on_its_backend_and_matches_undecorated():
    optcompile.reset_stats()
    reference, outer, _ = _meta_gradient(_inner_loop)
    steps_before = optcompile.stats()["eager"]["steps"]
    decorated = optcompile_decorator(backend="eager")(_inner_loop)
    got, got_outer, _ = _meta_gradient(decorated)
    assert optcompile.stats()["eager"]["steps"] == steps_before + 3
    torch.testing.assert_close(got, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_outer, outer, rtol=1e-12, atol=0)


def test_backend_named_by_a_transform_wins_over_the_decorator():
    optcompile.reset_stats()
    net, x, y, scale = _problem()
    optim = optcompile.MetaAdam(net, lr=0.05, backend="eager")
    optcompile_decorator(backend="native")(_inner_loop)(net, optim, x, y, scale)
    assert optcompile.stats()["native"]["steps"] == 0


def test_first_order_steps_are_not_differentiated_through():
    """First-order MAML: d outer / d scale is zero (it enters only through the inner grads),
    and the gradient to the initial weights is the outer gradient at the adapted weights."""
    net, x, y, scale = _problem()
    initial = [p for p in net.parameters()]
    optim = optcompile.MetaSGD(net, lr=0.1)
    outer = optcompile_decorator(backend="eager", first_order=True)(_inner_loop)(
        net, optim, x, y, scale
    )
    adapted = [p for p in net.parameters()]
    assert all(not p.requires_grad or p.grad_fn is not None for p in adapted)
    grads = torch.autograd.grad(outer, [scale, *initial], allow_unused=True, retain_graph=True)
    assert grads[0] is None
    at_adapted = torch.autograd.grad(outer, adapted)
    for got, want in zip(grads[1:], at_adapted, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_first_order_step_builds_no_graph_through_the_optimizer():
    net, x, y, scale = _problem()
    optim = optcompile.MetaAdam(net, lr=0.05)
    optcompile_decorator(backend="eager", first_order=True)(_inner_loop)(net, optim, x, y, scale)
    state = optim.state_dict()[0][0]
    assert all(m.grad_fn is None for m in state.mu)  # moments are plain values


def test_unknown_backend_is_rejected_at_decoration():
    with pytest.raises(ValueError, match=r"backend='gpu' is not a backend"):
        optcompile_decorator(backend="gpu")


def test_settings_do_not_leak_out_of_the_call():
    from optcompile.decorator import current_backend, first_order_active

    @optcompile_decorator(backend="eager", first_order=True)
    def inside():
        return current_backend(), first_order_active()

    assert inside() == ("eager", True)
    assert (current_backend(), first_order_active()) == (None, False)


# ------------------------------------------------------------------ found in review


def test_decorator_refuses_generators_and_non_bool_first_order():
    def generator_loop():
        yield

    with pytest.raises(TypeError, match=r"cannot decorate the generator or coroutine function"):
        optcompile.optcompile(backend="eager")(generator_loop)
    with pytest.raises(TypeError, match=r"first_order='yes' must be True or False"):
        optcompile.optcompile(first_order="yes")


def test_checkpoint_every_and_truncate_set_the_defaults_of_unroll_calls_inside():
    from torch.func import grad

    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    data = torch.randn(6, 5, dtype=torch.float64)
    tx = optcompile.adam(0.1, backend="eager")

    def step(params, state, k):
        grads = grad(lambda p: ((data[k] * p).sum() - 1.0) ** 2 + (p**2).sum())(params)
        updates, state = tx.update(grads, state, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    def outer(loop):
        params, _ = loop(w0, tx.init(w0))
        return torch.autograd.grad((params**3).sum(), [w0])[0]

    full = outer(lambda p, s: optcompile.unroll(step, p, s, 6))
    checkpointed = optcompile.optcompile(checkpoint_every=2, backend="eager")(
        lambda p, s: optcompile.unroll(step, p, s, 6)
    )
    torch.testing.assert_close(outer(checkpointed), full, rtol=1e-10, atol=1e-12)
    truncated = optcompile.optcompile(truncate=2, backend="eager")(
        lambda p, s: optcompile.unroll(step, p, s, 6)
    )
    got, _ = truncated(w0, tx.init(w0))
    want, _ = optcompile.unroll(step, w0, tx.init(w0), 6, truncate=2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    # Truncated: the first 4 steps are not differentiated, so w0 gets no meta-gradient.
    assert torch.autograd.grad((got**3).sum(), [w0], allow_unused=True) == (None,)
    with pytest.raises(ValueError, match="checkpoint_every"):
        optcompile.optcompile(checkpoint_every=0)
