"""Bugs found in review, each with the test that would have caught it."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import optcompile
from optcompile import transform as T

F64 = torch.float64


def _hessian_after_inner_steps(make_tx, w0: torch.Tensor, steps: int) -> torch.Tensor:
    """d/dw of (d outer / dw) through ``steps`` differentiable inner steps (double backward)."""
    w = w0.clone().requires_grad_()
    tx = make_tx()
    state = tx.init(w)
    current = w
    for _ in range(steps):
        (g,) = torch.autograd.grad((current**4).sum() * 0.25, current, create_graph=True)
        current, state = optcompile.apply_transform(tx, g, state, current, inplace=False)
    (gw,) = torch.autograd.grad(((current - 1) ** 2).sum(), w, create_graph=True)
    (h,) = torch.autograd.grad(gw.sum(), w)
    return h


def test_double_backward_through_radam_is_finite_during_its_unrectified_steps():
    w0 = torch.tensor([0.3, -0.7, 1.2], dtype=F64)
    h = _hessian_after_inner_steps(lambda: optcompile.radam(0.1, backend="eager"), w0, 3)
    assert torch.isfinite(h).all()


def test_double_backward_with_zero_gradients_is_finite():
    """An exactly-zero gradient puts sqrt at 0 inside the VJP that autograd differentiates."""
    w0 = torch.tensor([0.0, 0.5, 0.0], dtype=F64)
    for make in (optcompile.adam, optcompile.rmsprop, optcompile.adagrad):
        h = _hessian_after_inner_steps(lambda make=make: make(0.1, backend="eager"), w0, 2)
        assert torch.isfinite(h).all(), make.__name__


def test_optimizer_states_survive_torch_save_and_a_fresh_process(tmp_path):
    schedule = optcompile.schedule.linear_schedule(0.1, 0.01, 10)
    for tx in (optcompile.adam(0.1), optcompile.sgd(0.1, momentum=0.9), optcompile.adam(schedule)):
        state = tx.init([torch.ones(2)])
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        assert repr(torch.load(buffer, weights_only=False)) == repr(state)
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps(optcompile.rmsprop(0.1, momentum=0.5).init([torch.ones(2)])))
    code = f"import pickle; print(pickle.loads(open({str(path)!r}, 'rb').read()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("(ScaleByRmsState(nu=[tensor([0., 0.])]), TraceState(")


def test_momentum_update_does_not_alias_its_state():
    tx = T.trace(momentum=0.9, backend="eager")
    state = tx.init((torch.zeros(2),))
    updates, state = tx.update((torch.ones(2),), state)
    assert updates[0] is not state.trace[0]
    updates[0].mul_(-0.1)  # a caller (or an in-place transform) scales its update
    torch.testing.assert_close(state.trace[0], torch.ones(2))


def test_fused_members_at_different_steps_keep_their_own_counts():
    params, grads = (torch.ones(2),), (torch.tensor([1.0, -2.0]),)
    tx = optcompile.chain(T.trace(momentum=0.5), T.scale_by_adam())
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(grads, state)
    state = (state[0], T.scale_by_adam().init(params))  # reset Adam only
    updates, state = tx.update(grads, state)
    # Adam's first step from a fresh state is sign(g) whatever the incoming magnitude.
    torch.testing.assert_close(updates[0], torch.tensor([1.0, -1.0]))
    assert [int(c) for c in state[1].count] == [1]


def test_a_classic_step_in_inference_mode_does_not_break_later_meta_steps():
    p = torch.ones(3, requires_grad=True)
    classic = optcompile.Adam([p], lr=0.1, backend="eager")
    p.grad = torch.ones(3)
    with torch.inference_mode():
        classic.step()
    net = nn.Linear(3, 1)
    meta = optcompile.MetaAdam(net, lr=0.1, backend="eager")
    meta.step(net(torch.ones(2, 3)).sum())
    net(torch.ones(2, 3)).sum().backward()


def test_tied_weights_stay_tied_and_match_the_functional_reference():
    torch.manual_seed(0)
    enc = nn.Linear(3, 3, bias=False).double()
    dec = nn.Linear(3, 3, bias=False).double()
    dec.weight = enc.weight
    net = nn.Sequential(enc, nn.Tanh(), dec)
    w0 = enc.weight
    x = torch.randn(4, 3, dtype=F64)
    optim = optcompile.MetaSGD(net, lr=0.1, backend="eager")
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


def test_func_optimizer_takes_any_pytree_and_returns_the_same_structure():
    w = torch.randn(3, requires_grad=True)
    b = torch.randn((), requires_grad=True)
    optim = optcompile.FuncOptimizer(optcompile.sgd(0.1, backend="eager"))
    new = optim.step((w**2).sum() + b**2, {"w": w, "b": b})
    assert set(new) == {"w", "b"}
    torch.testing.assert_close(new["w"], w - 0.2 * w)
    torch.testing.assert_close(new["b"], b - 0.2 * b)


# ------------------------------------------------------------------ second review


def test_gradient_of_another_shape_is_rejected_not_broadcast():
    tx = optcompile.adam(0.1, backend="eager")
    state = tx.init([torch.randn(3)])
    with pytest.raises(ValueError, match=r"ScaleByAdamState\.mu\[0\] has shape \(3,\) but"):
        tx.update([torch.randn(2, 3)], state)


def test_params_of_another_shape_are_rejected():
    tx = optcompile.adam(0.1, weight_decay=0.1, backend="eager")
    state = tx.init([torch.randn(3)])
    with pytest.raises(ValueError, match=r"params: leaf 0 has shape \(2,\) but its update"):
        tx.update([torch.randn(3)], state, params=[torch.randn(2)])


def test_meta_optimizer_refuses_the_state_of_another_model():
    small = optcompile.MetaAdam(nn.Linear(1, 1), lr=0.1, backend="eager")
    large = optcompile.MetaAdam(nn.Linear(3, 1), lr=0.1, backend="eager")
    with pytest.raises(
        ValueError,
        match=r"mu\[0\]: shape \(1, 1\) in the state_dict, but this optimizer's is \(1, 3\)",
    ):
        large.load_state_dict(small.state_dict())


def test_decorator_refuses_generators_and_non_bool_first_order():
    def generator_loop():
        yield

    with pytest.raises(TypeError, match=r"cannot decorate the generator or coroutine function"):
        optcompile.optcompile(backend="eager")(generator_loop)
    with pytest.raises(TypeError, match=r"first_order='yes' must be True or False"):
        optcompile.optcompile(first_order="yes")


def test_visual_names_every_parameter_of_a_fused_step():
    net = nn.Linear(3, 2)
    optim = optcompile.MetaSGD(net, lr=0.1, backend="eager")
    optim.step(net(torch.ones(1, 3)).sum())
    state = optcompile.extract_state_dict(net, enable_visual=True, visual_prefix="step1.")
    assert sorted(state.visual_contents.values()) == ["step1.weight, step1.bias"]
    dot = optcompile.visual.make_dot(net(torch.ones(1, 3)).sum(), params=state)
    assert "step1.weight, step1.bias" in dot.source


def test_step_with_a_stale_loss_is_an_error_and_changes_nothing():
    net = nn.Linear(3, 1)
    optim = optcompile.MetaSGD(net, lr=0.1, backend="eager")
    loss = net(torch.ones(2, 3)).sum()
    optim.step(loss)
    before = [p for p in net.parameters()]
    with pytest.raises(ValueError, match=r"loss does not depend on any parameter"):
        optim.step(loss)  # computed before the last step
    assert all(a is b for a, b in zip(before, net.parameters(), strict=True))


def test_schedule_returning_a_vector_is_a_clear_error():
    tx = optcompile.sgd(lambda count: torch.ones(3), backend="eager")
    p = torch.ones(2)
    with pytest.raises(TypeError, match=r"a schedule must return a number or a 1-element tensor"):
        tx.update(torch.ones(2), tx.init(p), params=p)


def test_classic_optimizer_given_a_module_says_to_pass_its_parameters():
    with pytest.raises(TypeError, match=r"pass module\.parameters\(\)"):
        optcompile.Adam(nn.Linear(2, 2))
