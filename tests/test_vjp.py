"""The derived VJP against float64 finite differences and autograd, and its NaN-safe cases."""

import pytest
import torch

import optcompile
from optcompile import sym
from optcompile.lowering.autograd import apply_kernel
from optcompile.lowering.backends import get_backend
from optcompile.rules.adam import scale_by_adam
from optcompile.rules.rms import scale_by_rms
from optcompile.rules.sgd import trace

torch.set_default_dtype(torch.float32)


@optcompile.rule(state=("z",), domains={"beta": "[0, 1)"})
def softsign_momentum(g, z, *, beta=0.5, scale=2.0, params):
    """A rule declared in the test: abs, maximum and where all in one."""
    z = beta * z + (1 - beta) * g / (1 + sym.abs(g))
    capped = sym.maximum(z, -scale * params**2)
    return sym.where(capped > 0, capped * scale, capped), (z,)


def _kernel_fn(rule, count=None):
    """f(tensor inputs..., hyper tensors...) -> outputs, through the eager Function."""
    kernel = rule.kernel
    n_tensor = len(kernel.ir.tensor_inputs)

    def fn(*args):
        tensors, hypers = args[:n_tensor], args[n_tensor:]
        scalars = list(hypers)
        if kernel.ir.counts:
            scalars.append(torch.tensor(float(count), dtype=torch.float64))
        outputs = apply_kernel(
            kernel, get_backend("eager"), [[t] for t in tensors], scalars, differentiable=True
        )
        return tuple(column[0] for column in outputs)

    return fn


CASES = [
    # rule, hyper values, count, how to draw each tensor input (positive for second moments)
    (trace, (0.9, 0.1), 1, ("randn", "randn")),
    (trace, (0.9, 0.1), 3, ("randn", "randn")),
    (scale_by_adam, (0.9, 0.999, 1e-3, 0.0), 1, ("randn", "randn", "pos")),
    (scale_by_adam, (0.8, 0.99, 1e-8, 1e-4), 7, ("randn", "randn", "pos")),
    (scale_by_rms, (0.9, 1e-3, 0.0), None, ("randn", "pos")),
    (softsign_momentum, (0.5, 2.0), None, ("randn", "randn", "randn")),
]


def _draw(kind, generator):
    x = torch.randn(6, dtype=torch.float64, generator=generator)
    return x.abs() + 0.1 if kind == "pos" else x


@pytest.mark.parametrize("rule,hypers,count,kinds", CASES, ids=lambda c: getattr(c, "name", ""))
def test_vjp_matches_finite_differences(rule, hypers, count, kinds):
    generator = torch.Generator().manual_seed(0)
    tensors = [_draw(k, generator).requires_grad_() for k in kinds]
    hyper_tensors = [torch.tensor(h, dtype=torch.float64, requires_grad=True) for h in hypers]
    assert torch.autograd.gradcheck(_kernel_fn(rule, count), (*tensors, *hyper_tensors))


@pytest.mark.parametrize("rule,hypers,count,kinds", CASES, ids=lambda c: getattr(c, "name", ""))
def test_vjp_matches_autograd_of_the_forward(rule, hypers, count, kinds):
    """Where autograd is finite, the symbolic VJP equals autograd through the eager forward."""
    generator = torch.Generator().manual_seed(1)
    tensors = [_draw(k, generator).requires_grad_() for k in kinds]
    hyper_tensors = [torch.tensor(h, dtype=torch.float64, requires_grad=True) for h in hypers]
    inputs = (*tensors, *hyper_tensors)
    scalars = [torch.tensor(float(count), dtype=torch.float64)] if count is not None else []
    reference = rule.kernel.forward(*inputs, *scalars)  # plain torch ops: autograd differentiates
    ours = _kernel_fn(rule, count)(*inputs)
    cotangents = [torch.randn_like(r) for r in reference]
    expected = torch.autograd.grad(reference, inputs, cotangents, allow_unused=True)
    got = torch.autograd.grad(ours, inputs, cotangents, allow_unused=True)
    for e, o in zip(expected, got, strict=True):
        if e is None and o is None:
            continue
        e = torch.zeros_like(o) if e is None else e
        o = torch.zeros_like(e) if o is None else o
        torch.testing.assert_close(o, e, rtol=1e-10, atol=1e-12)


def _one_adam_step(c, *, lr=1e-3, eps=1e-8):
    """Update of one Adam step from zero state, for the gradient [c, 0] (the reference's case)."""
    tx = optcompile.adam(lr=lr, eps=eps, backend="eager")
    params = torch.zeros(2, dtype=torch.float64)
    state = tx.init(params)
    grads = torch.stack([c, torch.zeros((), dtype=torch.float64)])
    updates, _ = tx.update(grads, state, params=params, inplace=False)
    return updates


def test_adam_vjp_at_zero_gradient_is_the_exact_limit():
    c = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_one_adam_step(c).sum(), c)
    assert grad.item() == pytest.approx(-1e5, rel=1e-12)  # -lr / eps, the limit of the derivative
    h = 1e-13
    finite_difference = (
        _one_adam_step(torch.tensor(h, dtype=torch.float64)).sum()
        - _one_adam_step(torch.tensor(-h, dtype=torch.float64)).sum()
    ) / (2 * h)
    assert finite_difference.item() == pytest.approx(grad.item(), rel=1e-4)


def test_naive_autograd_gives_nan_where_the_derived_vjp_is_finite():
    """Zero gradient, zero state, count=1: autograd through the textbook formula is NaN."""
    g = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    mu, nu = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    b1, b2, eps = 0.9, 0.999, 1e-8
    m = b1 * mu + (1 - b1) * g
    v = b2 * nu + (1 - b2) * g**2
    naive = (m / (1 - b1)) / (torch.sqrt(v / (1 - b2)) + eps)
    (naive_grad,) = torch.autograd.grad(naive.sum(), g)
    assert torch.isnan(naive_grad).all()

    inputs = (g, mu, nu, *(torch.tensor(h, dtype=torch.float64) for h in (b1, b2, eps, 0.0)))
    outputs = _kernel_fn(scale_by_adam, count=1)(*inputs)
    (safe_grad,) = torch.autograd.grad(outputs[0].sum(), g)
    torch.testing.assert_close(safe_grad, torch.full_like(g, 1 / eps))


@pytest.mark.parametrize("rule,kinds", [(scale_by_rms, 2), (trace, 2), (scale_by_adam, 3)])
def test_vjp_is_finite_at_zero_inputs(rule, kinds):
    zeros = [torch.zeros(4, dtype=torch.float64, requires_grad=True) for _ in range(kinds)]
    hypers = [
        torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in rule.defaults.values()
    ]
    outputs = _kernel_fn(rule, count=1)(*zeros, *hypers)
    grads = torch.autograd.grad(sum(o.sum() for o in outputs), (*zeros, *hypers), allow_unused=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()


def test_learning_rate_hypergradient_matches_finite_differences():
    """d(outer)/d(lr) through two SGD-momentum steps, lr a 0-d tensor that requires grad."""
    torch.manual_seed(0)
    target = torch.randn(5, dtype=torch.float64)
    w0 = torch.randn(5, dtype=torch.float64)

    def outer(lr):
        tx = optcompile.sgd(lr=lr, momentum=0.9, backend="eager")
        w = w0.clone().requires_grad_()
        state = tx.init(w)
        for _ in range(2):
            (g,) = torch.autograd.grad(((w - target) ** 4).sum(), w, create_graph=True)
            updates, state = tx.update(g, state, params=w, inplace=False)
            w = w + updates
        return ((w - target) ** 2).sum()

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    (hypergrad,) = torch.autograd.grad(outer(lr), lr)
    h = 1e-6
    fd = (
        outer(torch.tensor(0.05 + h, dtype=torch.float64))
        - outer(torch.tensor(0.05 - h, dtype=torch.float64))
    ) / (2 * h)
    assert hypergrad.item() == pytest.approx(fd.item(), rel=1e-6)


def test_decay_hypergradient_matches_finite_differences():
    """The RMSprop decay as a learnable 0-d tensor receives d(loss)/d(decay), summed."""
    torch.manual_seed(1)
    g = torch.randn(7, dtype=torch.float64)
    nu = torch.rand(7, dtype=torch.float64)

    def loss(decay):
        tx = scale_by_rms(alpha=decay, eps=1e-3)
        state = scale_by_rms.state_type(nu=[nu.clone()])
        updates, new_state = tx.update(g, state, inplace=False)
        return (updates**2).sum() + new_state.nu[0].sum()

    decay = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(decay), decay)
    h = 1e-6
    fd = (
        loss(torch.tensor(0.7 + h, dtype=torch.float64))
        - loss(torch.tensor(0.7 - h, dtype=torch.float64))
    ) / (2 * h)
    assert grad.item() == pytest.approx(fd.item(), rel=1e-6)


def test_third_order_backward_runs_on_the_eager_vjp():
    """A backward under create_graph=True is itself differentiable (eager VJP ops)."""
    g = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    nu = torch.tensor([0.5, 0.1], dtype=torch.float64)
    fn = _kernel_fn(scale_by_rms)
    hypers = [
        torch.tensor(0.9, dtype=torch.float64),
        torch.tensor(1e-3, dtype=torch.float64),
        torch.tensor(0.0, dtype=torch.float64),
    ]

    def first(x):
        (d,) = torch.autograd.grad(fn(x, nu, *hypers)[0].sum(), x, create_graph=True)
        return d.sum()

    assert torch.autograd.gradcheck(first, (g,))


# ------------------------------------------------------------------ found in review

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
