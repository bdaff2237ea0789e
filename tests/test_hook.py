"""register_hook and the NaN hooks, on a real meta-gradient with a closed form."""

from __future__ import annotations

import math

import pytest
import torch

from optcompile.base import EmptyState
from optcompile.hook import nan_to_num_hook, register_hook, zero_nan_hook


def _meta_gradient(hook, lr=0.5, eps=1e-3):
    """x.grad through one Adam-like step u = g / (sqrt(g^2) + eps) whose g[0] is exactly 0.

    g = d(x * sum(w * a)) / da = x * w with w = (0, 1), so sqrt's backward at g[0] = 0 is 0/0.
    """
    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    a = torch.ones(2, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.0, 1.0], dtype=torch.float64)
    (g,) = torch.autograd.grad(x * (w * a).sum(), a, create_graph=True)
    if hook is not None:
        transform = register_hook(hook)
        (g,), _ = transform.update((g,), transform.init((a,)), inplace=False)
    a1 = a - lr * g / (torch.sqrt(g * g) + eps)
    (a1 * x).sum().backward()
    return x.grad.item()


def test_zero_nan_hook_makes_the_meta_gradient_finite_and_exact():
    lr, eps, x = 0.5, 1e-3, 2.0
    # d/dx sum(a1 * x) = sum(a1) + x * da1[1]/dx, with du/dg = eps / (|g| + eps)^2 at g = x.
    expected = (1.0 + 1.0 - lr * x / (x + eps)) - x * lr * eps / (x + eps) ** 2
    assert math.isnan(_meta_gradient(None, lr, eps))
    assert _meta_gradient(zero_nan_hook, lr, eps) == pytest.approx(expected, rel=1e-12)
    assert _meta_gradient(nan_to_num_hook(), lr, eps) == pytest.approx(expected, rel=1e-12)


def test_register_hook_registers_exactly_the_given_hook_and_returns_updates_unchanged():
    x = torch.ones(3, requires_grad=True)
    updates = {"w": x * 2, "b": None, "frozen": torch.zeros(2)}
    transform = register_hook(zero_nan_hook)
    state = transform.init(updates)
    assert state == EmptyState()
    out, new_state = transform.update(updates, state)
    assert out is updates and out["w"] is updates["w"] and new_state is state
    assert list(updates["w"]._backward_hooks.values()) == [zero_nan_hook]
    assert updates["frozen"]._backward_hooks is None  # no grad: nothing to hook


def test_hook_runs_on_the_backward_only():
    calls = []

    def hook(g):
        calls.append(g.clone())
        return g * 3

    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (u,), _ = register_hook(hook).update((x * 1,), EmptyState())
    assert calls == [] and torch.equal(u, x)
    (u**2).sum().backward()
    assert torch.equal(calls[0], 2 * x.detach())
    assert torch.equal(x.grad, 6 * x.detach())


def test_nan_to_num_hook_matches_torch_nan_to_num():
    g = torch.tensor([math.nan, math.inf, -math.inf, 1.5])
    assert torch.equal(nan_to_num_hook(1.0, 2.0, -3.0)(g), torch.tensor([1.0, 2.0, -3.0, 1.5]))
    assert torch.equal(nan_to_num_hook()(g), torch.nan_to_num(g))
    assert torch.equal(zero_nan_hook(g), torch.nan_to_num(g, nan=0.0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: register_hook(3), "hook must be callable, got int"),
        (lambda: nan_to_num_hook(nan=None), "nan must be a real number"),
        (lambda: nan_to_num_hook(posinf="big"), "posinf must be a real number"),
        (lambda: nan_to_num_hook(neginf=True), "neginf must be a real number"),
    ],
)
def test_bad_arguments_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()
