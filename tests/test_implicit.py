"""optcompile.diff.implicit: hypergradients equal closed forms, long unrolls and JAXopt
(float64); the root works under torch.func (jacrev, vmap, grad) and at second order; bad
input fails loudly."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import optcompile as torchopt
from optcompile.diff.implicit import ImplicitMetaGradientModule, custom_fixed_point, custom_root
from optcompile.linear_solve import solve_cg, solve_inv, solve_normal_cg

D = torch.float64


def _data(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# ---------------------------------------------------------------- ridge regression, closed form
X_TR, Y_TR = _data(0, 30, 5), _data(1, 30)
X_VAL, Y_VAL = _data(2, 20, 5), _data(3, 20)


def ridge_objective(w, lam):
    return 0.5 * ((X_TR @ w - Y_TR) ** 2).sum() + 0.5 * lam * (w @ w)


def ridge_optimality(w, lam):
    return torch.func.grad(ridge_objective)(w, lam)


def ridge_closed_form(lam):
    return torch.linalg.solve(X_TR.T @ X_TR + lam * torch.eye(5, dtype=D), X_TR.T @ Y_TR)


def val_loss(w):
    return 0.5 * ((X_VAL @ w - Y_VAL) ** 2).sum()


def ridge_hypergradient(lam: float) -> float:
    r"""dL_val/dlam = -g^T (H + lam I)^{-1} w*: the implicit function theorem by hand."""
    w = ridge_closed_form(torch.tensor(lam, dtype=D))
    g = X_VAL.T @ (X_VAL @ w - Y_VAL)
    H = X_TR.T @ X_TR + lam * torch.eye(5, dtype=D)
    return float(-g @ torch.linalg.solve(H, w))


LAMBDA_MAX = float(torch.linalg.eigvalsh(X_TR.T @ X_TR).max()) + 1.0
SOLVERS = {
    "cg": solve_cg(rtol=1e-13),
    "normal_cg": solve_normal_cg(rtol=1e-15, maxiter=100),
    "inv": solve_inv(),
    "inv_ns": solve_inv(ns=True, maxiter=2000, alpha=1.0 / LAMBDA_MAX),
}


@pytest.mark.parametrize("name", SOLVERS)
def test_ridge_hypergradient_equals_the_closed_form(name):
    @custom_root(ridge_optimality, argnums=1, solve=SOLVERS[name])
    def ridge_solver(w0, lam):
        return ridge_closed_form(lam)

    lam = torch.tensor(1.5, dtype=D, requires_grad=True)
    val_loss(ridge_solver(torch.zeros(5, dtype=D), lam)).backward()
    assert lam.grad.item() == pytest.approx(ridge_hypergradient(1.5), rel=1e-8, abs=1e-10)


class RidgeModule(ImplicitMetaGradientModule):
    """The regularisation strength is a learnable meta-parameter (TorchOpt #163)."""

    def __init__(self, log_lam: torch.Tensor):
        super().__init__()
        self.log_lam = log_lam
        self.w = nn.Parameter(torch.zeros(5, dtype=D))

    def objective(self):
        return ridge_objective(self.w, self.log_lam.exp())

    def solve(self):
        with torch.enable_grad():  # any algorithm: here plain gradient descent
            for _ in range(300):
                (g,) = torch.autograd.grad(self.objective(), self.w)
                with torch.no_grad():
                    self.w.sub_(g / LAMBDA_MAX)
        return self


def test_learnable_hyperparameter_gets_its_hypergradient_through_the_module():
    log_lam = torch.tensor(math.log(1.5), dtype=D, requires_grad=True)
    model = RidgeModule(log_lam)
    assert [name for name, _ in model.named_meta_parameters()] == ["log_lam"]
    assert model.solve() is model
    val_loss(model.w).backward()
    assert RidgeModule.linear_solve.__name__ == "solve_cg"  # objective only: symmetric Hessian
    assert log_lam.grad.item() == pytest.approx(1.5 * ridge_hypergradient(1.5), rel=1e-8)


# ------------------------------------------------------------------ iMAML on a small problem
REG, INNER_LR, INNER_STEPS = 2.0, 0.1, 400


def task(seed: int):
    x, y = _data(10 + seed, 12, 4), _data(20 + seed, 12)
    return x, y, _data(30 + seed, 8, 4), _data(40 + seed, 8)


def inner_objective(w, theta, x, y):
    r"""Loss on the support set plus the proximal term (REG/2) ||w - theta||^2 of iMAML."""
    return ((torch.tanh(x @ w) - y) ** 2).mean() + 0.5 * REG * ((w - theta) ** 2).sum()


def outer_loss(w, x, y):
    return ((torch.tanh(x @ w) - y) ** 2).mean()


def gradient_descent(w, theta, x, y):
    for _ in range(INNER_STEPS):
        w = w - INNER_LR * torch.func.grad(inner_objective)(w, theta, x, y)
    return w


def imaml_solver(solve):
    @custom_root(torch.func.grad(inner_objective), argnums=1, solve=solve)
    def solver(w0, theta, x, y):
        return gradient_descent(w0, theta, x, y)

    return solver


def implicit_meta_loss(theta, x, y, xv, yv, solve=None):
    solver = imaml_solver(solve or solve_cg(rtol=1e-12))
    return outer_loss(solver(theta.detach(), theta, x, y), xv, yv)


def test_imaml_meta_gradient_equals_a_long_unroll():
    theta = _data(5, 4)
    x, y, xv, yv = task(0)
    implicit = torch.func.grad(implicit_meta_loss)(theta, x, y, xv, yv)
    # Differentiating through every step (the start depends on theta too) converges to the
    # same meta-gradient once the inner loop has converged.
    unrolled = torch.func.grad(lambda t: outer_loss(gradient_descent(t, t, x, y), xv, yv))(theta)
    assert torch.allclose(implicit, unrolled, rtol=0, atol=1e-10)
    assert implicit.abs().max() > 1e-3


@pytest.mark.parametrize(
    "solve",
    [
        solve_normal_cg(rtol=1e-14, maxiter=50),
        solve_inv(),
        solve_inv(ns=True, maxiter=200, alpha=0.3),
    ],
    ids=["normal_cg", "inv", "inv_ns"],
)
def test_imaml_meta_gradient_is_the_same_with_every_solver(solve):
    theta, (x, y, xv, yv) = _data(5, 4), task(0)
    reference = torch.func.grad(implicit_meta_loss)(theta, x, y, xv, yv)
    got = torch.func.grad(implicit_meta_loss)(theta, x, y, xv, yv, solve)
    assert torch.allclose(got, reference, rtol=0, atol=1e-10)


def test_imaml_meta_gradient_equals_jaxopt():
    jax = pytest.importorskip("jax")
    jaxopt = pytest.importorskip("jaxopt")
    jnp = jax.numpy
    theta, (x, y, xv, yv) = _data(5, 4), task(0)
    ours = torch.func.grad(implicit_meta_loss)(theta, x, y, xv, yv)
    with jax.enable_x64(True):

        def inner(w, theta, x, y):
            return jnp.mean((jnp.tanh(x @ w) - y) ** 2) + 0.5 * REG * jnp.sum((w - theta) ** 2)

        @jaxopt.implicit_diff.custom_root(jax.grad(inner), solve=jaxopt.linear_solve.solve_cg)
        def solver(w0, theta, x, y):
            step = lambda _, w: w - INNER_LR * jax.grad(inner)(w, theta, x, y)  # noqa: E731
            return jax.lax.fori_loop(0, INNER_STEPS, step, w0)

        def meta(theta, x, y, xv, yv):
            w = solver(jax.lax.stop_gradient(theta), theta, x, y)
            return jnp.mean((jnp.tanh(xv @ w) - yv) ** 2)

        args = [jnp.asarray(t.numpy()) for t in (theta, x, y, xv, yv)]
        theirs = torch.from_numpy(jax.device_get(jax.jit(jax.grad(meta))(*args)).copy())
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-9)


def test_vmap_over_tasks_equals_a_loop():
    theta = _data(5, 4)
    tasks = [task(i) for i in range(8)]
    stacked = [torch.stack(parts) for parts in zip(*tasks, strict=True)]
    meta_grad = torch.func.grad(implicit_meta_loss)
    batched = torch.func.vmap(meta_grad, in_dims=(None, 0, 0, 0, 0))(theta, *stacked)
    looped = torch.stack([meta_grad(theta, *t) for t in tasks])
    assert torch.allclose(batched, looped, rtol=0, atol=1e-12)


def test_autograd_and_torch_func_agree():
    theta, (x, y, xv, yv) = _data(5, 4), task(1)
    via_func = torch.func.grad(implicit_meta_loss)(theta, x, y, xv, yv)
    theta = theta.clone().requires_grad_()
    implicit_meta_loss(theta, x, y, xv, yv).backward()
    assert torch.allclose(theta.grad, via_func, rtol=0, atol=1e-14)


# ------------------------------------------------------------ jacrev, scalar roots, 2nd order
W = 0.4 * _data(6, 4, 4) / _data(6, 4, 4).norm()  # a contraction


def layer(x, theta):
    return torch.tanh(W @ x + theta)


@custom_fixed_point(layer, argnums=1, solve=solve_inv())  # (J - I) is not symmetric: no CG
def equilibrium(x0, theta):
    x = x0
    for _ in range(60):
        x = layer(x, theta)
    return x


def test_jacrev_through_a_fixed_point_matches_finite_differences():
    # TorchOpt's old-style Function raises under jacrev (#223).
    theta = _data(7, 4)
    jac = torch.func.jacrev(lambda t: equilibrium(torch.zeros(4, dtype=D), t))(theta)
    h = 1e-6
    columns = []
    for i in range(4):
        e = torch.zeros(4, dtype=D)
        e[i] = h
        plus, minus = equilibrium(torch.zeros(4, dtype=D), theta + e), equilibrium(
            torch.zeros(4, dtype=D), theta - e
        )
        columns.append((plus - minus) / (2 * h))
    assert torch.allclose(jac, torch.stack(columns, dim=1), rtol=0, atol=1e-8)


def test_scalar_root_has_a_nonzero_correct_gradient():
    # TorchOpt #222: CG's default budget 10 * size was 0 for a scalar -> zero gradients.
    @custom_root(lambda x, a: x**2 - a, argnums=1)  # the default solver, default budget
    def sqrt(x0, a):
        return a.sqrt()

    a = torch.tensor(4.0, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(sqrt(torch.tensor(1.0, dtype=D), a), a)
    assert g.item() == pytest.approx(0.25, rel=1e-12)


@pytest.mark.parametrize("name", ["cg", "inv"])
def test_second_derivative_through_the_root(name):
    @custom_root(ridge_optimality, argnums=1, solve=SOLVERS[name])
    def ridge_solver(w0, lam):
        return ridge_closed_form(lam)

    def f(lam):
        return val_loss(ridge_solver(torch.zeros(5, dtype=D), lam))

    def exact(lam):
        return val_loss(ridge_closed_form(lam))

    lam = torch.tensor(1.5, dtype=D, requires_grad=True)
    (g,) = torch.autograd.grad(f(lam), lam, create_graph=True)
    (h,) = torch.autograd.grad(g, lam)
    want = torch.func.grad(torch.func.grad(exact))(torch.tensor(1.5, dtype=D))
    assert h.item() == pytest.approx(want.item(), rel=1e-8)
    nested = torch.func.jacrev(torch.func.jacrev(f))(torch.tensor(1.5, dtype=D))
    assert nested.item() == pytest.approx(want.item(), rel=1e-8)


# torch's forward-mode decompositions use torch.jit.script on first load, which warns.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["cg", "normal_cg", "inv"])
def test_forward_mode_jacfwd_and_hessian_through_the_root(name):
    @custom_root(ridge_optimality, argnums=1, solve=SOLVERS[name])
    def ridge_solver(w0, lam):
        return ridge_closed_form(lam)

    def f(lam):
        return ridge_solver(torch.zeros(5, dtype=D), lam)

    lam = torch.tensor(1.5, dtype=D)
    exact = torch.func.jacrev(ridge_closed_form)(lam)
    assert torch.allclose(torch.func.jacfwd(f)(lam), exact, rtol=0, atol=1e-12)
    hessian = torch.func.hessian(lambda t: val_loss(f(t)))(lam)
    want = torch.func.hessian(lambda t: val_loss(ridge_closed_form(t)))(lam)
    assert hessian.item() == pytest.approx(want.item(), rel=1e-8)


def test_aux_passes_through_and_trees_are_accepted():
    @custom_root(lambda x, p: {"a": x["a"] - p["s"], "b": x["b"] * 2 - p["s"]}, argnums=1,
                 has_aux=True, solve=solve_inv())  # fmt: skip
    def solver(x0, p):
        return {"a": p["s"].clone(), "b": p["s"] / 2}, ("note", torch.ones(2))

    s = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    out, (note, ones) = solver(None, {"s": s})
    assert note == "note" and not ones.requires_grad
    (out["a"].sum() + out["b"].sum()).backward()
    assert torch.allclose(s.grad, torch.full((2,), 1.5, dtype=D))


# ----------------------------------------------------------------- object-oriented iMAML
class InnerNet(ImplicitMetaGradientModule):
    def __init__(self, meta_net: nn.Module):
        super().__init__()
        self.meta_net = meta_net
        self.net = torchopt.module_clone(meta_net, by="deepcopy", detach_buffers=True)

    def forward(self, x):
        return self.net(x)

    def objective(self, x, y):
        loss = ((self(x).squeeze(-1) - y) ** 2).mean()
        pairs = zip(self.parameters(), self.meta_parameters(), strict=True)
        prox = sum(((p - q) ** 2).sum() for p, q in pairs)
        return loss + 0.5 * REG * prox

    def solve(self, x, y):
        params = tuple(self.parameters())
        optimizer = torch.optim.SGD(params, lr=INNER_LR)
        with torch.enable_grad():
            for _ in range(INNER_STEPS):
                optimizer.zero_grad()
                self.objective(x, y).backward(inputs=params)
                optimizer.step()
        return self


def _tanh_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(4, 1, bias=False, dtype=D), nn.Tanh())
    with torch.no_grad():
        net[0].weight.copy_(_data(5, 4)[None])
    return net


def test_module_imaml_equals_functional_imaml():
    x, y, xv, yv = task(2)
    meta_net = _tanh_net()
    inner = InnerNet(meta_net)
    inner.solve(x, y)
    ((inner(xv).squeeze(-1) - yv) ** 2).mean().backward()
    functional = torch.func.grad(implicit_meta_loss)(_data(5, 4), x, y, xv, yv)
    assert torch.allclose(meta_net[0].weight.grad[0], functional, rtol=0, atol=1e-9)


def test_module_with_meta_net_in_eval_mode_gets_meta_gradients():
    x, y, xv, yv = task(3)
    meta_net = _tanh_net().eval()  # TorchOpt #144: no meta-parameters were found in eval()
    inner = InnerNet(meta_net)
    assert len(list(inner.meta_parameters())) == 1
    inner.solve(x, y)
    ((inner(xv).squeeze(-1) - yv) ** 2).mean().backward()
    assert meta_net[0].weight.grad.abs().max() > 1e-4


class Equilibrium(ImplicitMetaGradientModule, linear_solve=solve_normal_cg(rtol=1e-14, maxiter=50)):
    """A fixed point z = tanh(W z + theta) with a custom optimality: T(z) - z."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = theta
        self.z = nn.Parameter(torch.zeros(4, dtype=D))

    def optimality(self):
        return (layer(self.z, self.theta) - self.z,)

    def solve(self):
        for _ in range(60):
            self.z.copy_(layer(self.z, self.theta))


def test_module_with_a_custom_optimality_matches_custom_fixed_point():
    theta = _data(7, 4).requires_grad_()
    module = Equilibrium(theta)
    module.solve()
    module.z.sum().backward()
    want = torch.func.grad(lambda t: equilibrium(torch.zeros(4, dtype=D), t).sum())(_data(7, 4))
    assert torch.allclose(theta.grad, want, rtol=0, atol=1e-10)


def test_subclass_of_a_subclass_is_wrapped_once_with_its_own_settings():
    class Wider(RidgeModule, linear_solve=solve_inv()):
        pass

    log_lam = torch.tensor(math.log(1.5), dtype=D, requires_grad=True)
    model = Wider(log_lam)
    model.solve()
    val_loss(model.w).backward()
    assert log_lam.grad.item() == pytest.approx(1.5 * ridge_hypergradient(1.5), rel=1e-8)


# ------------------------------------------------------------------------------- bad input
def test_optimality_of_the_wrong_shape_is_an_error():
    @custom_root(lambda w, lam: ridge_optimality(w, lam)[:-1], argnums=1)
    def solver(w0, lam):
        return ridge_closed_form(lam)

    lam = torch.tensor(1.0, dtype=D, requires_grad=True)
    with pytest.raises(ValueError, match=r"shapes \[\(4,\)\], but the solution has .*\[\(5,\)\]"):
        solver(torch.zeros(5, dtype=D), lam).sum().backward()


@pytest.mark.parametrize(
    ("argnums", "error", "match"),
    [
        (0, ValueError, "must not contain 0"),
        ((1, -1), ValueError, "positive"),
        ("1", TypeError, "int or a non-empty tuple"),
        ((), TypeError, "int or a non-empty tuple"),
    ],
)
def test_bad_argnums_are_refused_at_decoration(argnums, error, match):
    with pytest.raises(error, match=match):
        custom_root(ridge_optimality, argnums=argnums)


def test_argnums_past_the_arguments_or_on_a_non_tensor_is_an_error():
    def solver(w0, lam, note="x"):
        return ridge_closed_form(lam)

    lam = torch.tensor(1.0, dtype=D, requires_grad=True)
    with pytest.raises(ValueError, match=r"argnums=\(3,\) is out of range: .* 3 positional"):
        custom_root(ridge_optimality, argnums=3)(solver)(torch.zeros(5, dtype=D), lam)
    with pytest.raises(TypeError, match="argument 2 of solver is in argnums but holds no"):
        custom_root(ridge_optimality, argnums=2)(solver)(torch.zeros(5, dtype=D), lam)


def test_a_solve_that_does_not_converge_warns_with_its_residual():
    @custom_root(ridge_optimality, argnums=1, solve=solve_cg(maxiter=1))
    def solver(w0, lam):
        return ridge_closed_form(lam)

    lam = torch.tensor(1.0, dtype=D, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"did not converge in maxiter=1 .*residual norm \d"):
        val_loss(solver(torch.zeros(5, dtype=D), lam)).backward()


def test_module_contract_errors():
    with pytest.raises(TypeError, match="either an optimality\\(\\) method or an objective"):

        class Neither(ImplicitMetaGradientModule):
            def solve(self):
                pass

    with pytest.raises(TypeError, match="must not be a staticmethod"):

        class Static(ImplicitMetaGradientModule):
            @staticmethod
            def objective():
                return torch.zeros(())

            def solve(self):
                pass

    model = RidgeModule(torch.tensor(0.0, dtype=D))  # the tensor does not require grad
    with pytest.raises(RuntimeError, match="no meta-parameters"):
        model.solve()


# ------------------------------------------------------------------------ TorchOpt parity
def _torchopt_tutorial_meta_grads(torchopt_module):
    """TorchOpt tutorial 5's functional iMAML, verbatim but for make_functional."""

    def imaml_objective(params, meta_params, data):
        x, y, fmodel = data
        pairs = zip(params, meta_params, strict=True)
        reg = sum(0.5 * torch.sum(torch.square(p1 - p2)) for p1, p2 in pairs)
        return torch.nn.functional.mse_loss(fmodel(params, x), y) + reg

    @torchopt_module.diff.implicit.custom_root(
        torch.func.grad(imaml_objective, argnums=0),
        argnums=1,
        solve=torchopt_module.linear_solve.solve_normal_cg(maxiter=5, atol=0),
    )
    def inner_solver(params, meta_params, data):
        optimizer = torchopt_module.sgd(lr=2e-2)
        opt_state = optimizer.init(params)
        with torch.enable_grad():
            for _ in range(100):
                grads = torch.autograd.grad(imaml_objective(params, meta_params, data), params)
                updates, opt_state = optimizer.update(grads, opt_state, inplace=True)
                params = torchopt_module.apply_updates(params, updates, inplace=True)
        return params

    x, w, b = _data(50, 20, 4), _data(51, 4, 1), _data(52, 1)
    y = x @ w + b + 0.5 * _data(53, 20, 1)
    model = nn.Linear(4, 1, dtype=D)
    names = [n for n, _ in model.named_parameters()]

    def fmodel(params, x):
        return torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))

    meta_params = tuple(torch.zeros_like(p).requires_grad_() for p in model.parameters())
    inner_params = tuple(p.clone().detach_().requires_grad_(True) for p in meta_params)
    optimal = inner_solver(inner_params, meta_params, (x, y, fmodel))
    return torch.autograd.grad(fmodel(optimal, x).mean(), meta_params)


def test_torchopt_tutorial_code_gives_torchopts_numbers():
    reference = pytest.importorskip("torchopt")
    ours = _torchopt_tutorial_meta_grads(torchopt)  # optcompile, imported as torchopt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchOpt calls functorch.vjp
        theirs = _torchopt_tutorial_meta_grads(reference)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
