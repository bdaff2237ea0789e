"""Zero-order gradients: unbiased estimators, vmap == loop, flat memory, modules, bad input.

References: the closed-form gradient of a quadratic (which equals its Gaussian smoothing's), a
plain-loop replay of the recorded noise (the formulas, chunk by chunk), and TorchOpt 0.7.3
where installed (whose ``forward`` estimator is shown to be biased).
"""

from __future__ import annotations

import math
import warnings
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import optcompile
from optcompile import HyperparameterError
from optcompile.diff.zero_order import ZeroOrderGradientModule, zero_order
from optcompile.diff.zero_order._estimate import _orthogonalize

METHODS = ("naive", "forward", "antithetic")
F64 = torch.float64


def _normal():
    return torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))


def _quadratic(d=4):
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(d, d, generator=gen, dtype=F64)
    a = m @ m.T / d + torch.eye(d, dtype=F64)
    b = torch.randn(d, generator=gen, dtype=F64)
    x = torch.randn(d, generator=gen, dtype=F64)

    def f(x):
        return 0.5 * x @ a @ x + b @ x

    return f, x, a @ x + b


def _grad(fn, *args):
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return torch.autograd.grad(fn(*args), leaves)


# --- statistics: unbiased on quadratics ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "sigma", "orthogonal"),
    [(m, s, False) for m in METHODS for s in (0.05, 0.3, 1.0)] + [(m, 0.3, True) for m in METHODS],
)
def test_mean_within_four_standard_errors(method, sigma, orthogonal):
    """Over 200 seeds, the mean estimate lies within 4 standard errors of the true gradient."""
    f, x, true = _quadratic()
    zo = zero_order(_normal(), method, num_samples=16, sigma=sigma, orthogonal=orthogonal)(f)
    x = x.clone().requires_grad_()
    torch.manual_seed(0)
    estimates = torch.stack([_grad(zo, x)[0] for _ in range(200)])
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert ((mean - true).abs() < 4 * se).all(), (mean, true, se)
    if method != "naive":  # tight enough that a scaled or biased estimator fails
        assert (se < 0.1 * true.norm()).all()


def test_torchopt_forward_is_biased_ours_is_not():
    """TorchOpt 0.7.3's ``forward`` multiplies by sigma and drifts its baseline; ours does not."""
    torchopt = pytest.importorskip("torchopt")
    f, x, true = _quadratic(d=10)
    x = x.clone().requires_grad_()
    kwargs = {"method": "forward", "num_samples": 2000, "sigma": 0.01}
    torch.manual_seed(0)
    theirs = _grad(torchopt.diff.zero_order.zero_order(_normal(), **kwargs)(f), x)[0]
    ours = _grad(zero_order(_normal(), **kwargs)(f), x)[0]
    cosine = torch.nn.functional.cosine_similarity(ours, true, dim=0)
    assert 0.9 < ours.norm() / true.norm() < 1.1 and cosine > 0.95
    assert theirs.norm() / true.norm() < 0.01


# --- the formulas, replayed on the recorded noise -------------------------------------------


class Recording:
    """Standard normal noise that remembers every draw (in order)."""

    def __init__(self):
        self.draws = []

    def sample(self, sample_shape):
        z = torch.randn(sample_shape, dtype=F64)
        self.draws.append(z)
        return z


def _replay(f, leaves, draws, method, sigma, num_samples):
    """The estimate from a plain loop over the recorded noise: sum of w_i z_i over n."""
    per_chunk = [draws[i : i + len(leaves)] for i in range(0, len(draws), len(leaves))]
    sums = [torch.zeros_like(x) for x in leaves]
    for chunk in per_chunk:
        for i in range(chunk[0].shape[0]):
            z = [c[i] for c in chunk]
            up = f([x + sigma * zi for x, zi in zip(leaves, z, strict=True)])
            if method == "naive":
                w = up / sigma
            elif method == "forward":
                w = (up - f(leaves)) / sigma
            else:
                down = f([x - sigma * zi for x, zi in zip(leaves, z, strict=True)])
                w = (up - down) / (2 * sigma)
            for s, zi in zip(sums, z, strict=True):
                s += w * zi
    return [s / num_samples for s in sums]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_estimate_matches_replay_over_pytree_argnums(method, chunk_size):
    """argnums over pytrees, chunks with a remainder (10 = 3+3+3+1): the formulas exactly."""
    sigma, n = 0.2, 10
    gen = torch.Generator().manual_seed(2)
    params = {"w": torch.randn(3, generator=gen, dtype=F64), "b": torch.tensor(0.5, dtype=F64)}
    scale = torch.tensor([1.5, -0.5], dtype=F64)
    data = torch.randn(5, 3, generator=gen, dtype=F64)

    def loss(scale, params, data):
        return (torch.tanh(data @ params["w"] + params["b"]) * scale[0] + scale[1]).pow(2).mean()

    noise = Recording()
    zo = zero_order(noise, method, argnums=(0, 1), num_samples=n, sigma=sigma,
                    chunk_size=chunk_size)(loss)  # fmt: skip
    params = {k: v.requires_grad_() for k, v in params.items()}
    scale.requires_grad_()
    grads = torch.autograd.grad(zo(scale, params, data), [scale, params["b"], params["w"]])
    assert len(noise.draws) == 3 * (1 if chunk_size is None else 4)

    # optree flattens dict keys sorted: scale, b, w
    def flat_loss(leaves):
        return loss(leaves[0], {"b": leaves[1], "w": leaves[2]}, data)

    leaves = [scale.detach(), params["b"].detach(), params["w"].detach()]
    expected = _replay(flat_loss, leaves, noise.draws, method, sigma, n)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_coordinate_directions_recover_a_linear_gradient_exactly():
    """With z = sqrt(d) e_i, forward and antithetic give b exactly (1/sigma, not sigma)."""
    d = 4
    b = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=F64)

    def coordinates(shape):
        return math.sqrt(d) * torch.eye(d, dtype=F64)

    x = torch.randn(d, dtype=F64, requires_grad=True)
    for method in ("forward", "antithetic"):
        zo = zero_order(coordinates, method, num_samples=d, sigma=1e-3)(lambda x: b @ x + 7.0)
        torch.testing.assert_close(_grad(zo, x)[0], b)


def test_orthogonal_directions_keep_norms_and_are_orthogonal():
    torch.manual_seed(0)
    noise = [torch.randn(10, 2, 3, dtype=F64), torch.randn(10, 2, dtype=F64)]  # D = 8
    out = _orthogonalize(noise)
    flat_in = torch.cat([z.reshape(10, -1) for z in noise], 1)
    flat = torch.cat([z.reshape(10, -1) for z in out], 1)
    torch.testing.assert_close(flat.norm(dim=1), flat_in.norm(dim=1))
    block = flat[:8] / flat[:8].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(8, dtype=F64))


# --- vmap against the loop ------------------------------------------------------------------


def _mlp_loss(w1, w2, x):
    return torch.tanh(x @ w1).relu().matmul(w2).pow(2).mean()


@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_loop_for_a_fixed_seed(method):
    gen = torch.Generator().manual_seed(3)
    w1 = torch.randn(3, 8, generator=gen, dtype=F64, requires_grad=True)
    w2 = torch.randn(8, generator=gen, dtype=F64, requires_grad=True)
    x = torch.randn(16, 3, generator=gen, dtype=F64)
    grads = []
    for vectorize in (True, False):
        zo = zero_order(_normal(), method, argnums=(0, 1), num_samples=20, sigma=0.1,
                        chunk_size=8, vectorize=vectorize)(_mlp_loss)  # fmt: skip
        torch.manual_seed(11)
        grads.append(_grad(zo, w1, w2, x))
    for vmapped, looped in zip(*grads, strict=True):
        torch.testing.assert_close(vmapped, looped, rtol=1e-12, atol=1e-14)


def test_loop_takes_over_once_where_vmap_fails():
    def branchy(x):  # data-dependent control flow: vmap cannot run it
        return x.pow(2).sum() if x.sum() > 0 else x.abs().sum()

    x = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    zo = zero_order(_normal(), "antithetic", num_samples=8, sigma=0.1)(branchy)
    looped = zero_order(_normal(), "antithetic", num_samples=8, sigma=0.1, vectorize=False)(branchy)
    torch.manual_seed(5)
    with pytest.warns(RuntimeWarning, match="vmap cannot evaluate branchy"):
        got = _grad(zo, x)
    torch.manual_seed(5)
    torch.testing.assert_close(got, _grad(looped, x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _grad(zo, x)  # said once


def test_the_callers_generator_is_left_alone():
    f, x, _ = _quadratic()
    zo = zero_order(_normal(), "forward", num_samples=50, sigma=0.1)(f)
    x = x.clone().requires_grad_()
    torch.manual_seed(0)
    out = zo(x)
    state = torch.get_rng_state()
    out.backward()
    assert torch.equal(torch.get_rng_state(), state)


# --- memory ---------------------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that ops create while the mode is on (freed ones subtracted)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self._seen:
                    self._seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, size)
        return out

    def _free(self, key, size):
        self.live -= size
        self._seen.discard(key)


def _peak_and_saved(num_samples, chunk_size):
    d = 4096
    x = torch.randn(d, dtype=F64, requires_grad=True)
    zo = zero_order(_normal(), "antithetic", num_samples=num_samples, sigma=0.1,
                    chunk_size=chunk_size)(lambda x: torch.sin(x).sum())  # fmt: skip
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.untyped_storage().nbytes()) or t, lambda t: t
    ):
        out = zo(x)
    mode = _LiveBytes()
    with mode:
        out.backward()
    return mode.peak, sum(saved), d * 8


def test_memory_does_not_grow_with_num_samples():
    """Peak live bytes in backward and bytes saved for it: the same at 32 and 1024 samples."""
    small, saved_small, param_bytes = _peak_and_saved(32, chunk_size=16)
    large, saved_large, _ = _peak_and_saved(1024, chunk_size=16)
    assert saved_small == saved_large <= param_bytes + 64  # x and f(x), no noise
    assert large <= 1.1 * small
    # noise, x+-sigma*z and sin's temporaries of one chunk: far below 1024 samples' noise
    assert large < 16 * 12 * param_bytes < 1024 * param_bytes
    unchunked, _, _ = _peak_and_saved(1024, chunk_size=1024)
    assert unchunked > 10 * large  # the chunk, not num_samples, bounds memory


# --- modules and meta-optimizers ------------------------------------------------------------


class RoundedRegression(ZeroOrderGradientModule, method="antithetic", num_samples=32, sigma=0.1):
    """A linear model whose predictions are rounded to quarters: zero gradient almost anywhere."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.distribution = torch.distributions.Normal(0.0, 1.0)

    def forward(self, x, y):
        return (torch.round(self.linear(x) * 4) / 4 - y).pow(2).mean()

    def sample(self, sample_shape=torch.Size()):  # noqa: B008
        return self.distribution.sample(sample_shape)


def _regression_data():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 4, generator=gen)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def test_module_trains_a_non_differentiable_objective():
    torch.manual_seed(0)
    net = RoundedRegression()
    x, y = _regression_data()
    with torch.no_grad():  # autograd sees a flat function: only zero-order can train it
        weight = net.linear.weight.detach().requires_grad_()
        rounded = (torch.round(x @ weight.T * 4) / 4 - y).pow(2).mean()
    assert rounded.grad_fn is None
    optimizer = optcompile.Adam(net.parameters(), lr=0.05)
    first = net(x, y).item()
    for _ in range(40):
        loss = net(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert net(x, y).item() < 0.3 * first


def test_module_subclass_rewraps_with_its_own_settings():
    class Naive(RoundedRegression, method="naive", num_samples=3):
        pass

    torch.manual_seed(0)
    net = Naive()
    x, y = _regression_data()
    net(x, y).backward()
    assert net.linear.weight.grad is not None and net.linear.weight.grad.shape == (1, 4)


def test_inner_objective_of_a_meta_optimizer():
    """MetaSGD steps on the zero-order estimate; the outer gradient flows through the step."""
    torch.manual_seed(0)
    net = RoundedRegression()
    x, y = _regression_data()
    params = list(net.parameters())
    torch.manual_seed(1)
    estimate = torch.autograd.grad(net(x, y), params)
    optimizer = optcompile.MetaSGD(net, lr=0.1)
    torch.manual_seed(1)
    optimizer.step(net(x, y))
    new = list(net.parameters())
    for p0, p1, g in zip(params, new, estimate, strict=True):
        torch.testing.assert_close(p1, p0 - 0.1 * g)
    outer = (torch.nn.functional.linear(x, new[0], new[1]) - y).pow(2).mean()
    outer.backward()
    # The estimate is a constant of the parameters, so d(outer)/d(p0) = d(outer)/d(p1).
    w, b = (p.detach().requires_grad_() for p in new)
    reference = torch.autograd.grad((torch.nn.functional.linear(x, w, b) - y).pow(2).mean(), [w, b])
    for p0, r in zip(params, reference, strict=True):
        torch.testing.assert_close(p0.grad, r)


def test_meta_adam_runs_on_zero_order_losses():
    torch.manual_seed(0)
    net = RoundedRegression()
    x, y = _regression_data()
    optimizer = optcompile.MetaAdam(net, lr=0.05)
    for _ in range(3):
        optimizer.step(net(x, y))
    outer = (net.linear(x) - y).pow(2).mean()
    outer.backward()


# --- TorchOpt's spellings --------------------------------------------------------------------


def test_torchopt_spellings():
    assert optcompile.nn.ZeroOrderGradientModule is ZeroOrderGradientModule
    assert optcompile.diff.zero_order.zero_order is zero_order

    @optcompile.diff.zero_order(lambda shape: torch.randn(shape), method="forward", argnums=0,
                                num_samples=64, sigma=0.01)  # fmt: skip
    def f(x):
        return (x**2).sum()

    x = torch.tensor([1.0, -1.0], requires_grad=True)
    f(x).backward()
    assert torch.nn.functional.cosine_similarity(x.grad, 2 * x.detach(), dim=0) > 0.5


# --- bad input ------------------------------------------------------------------------------

NORMAL = torch.distributions.Normal(0.0, 1.0)
BAD_SETTINGS = [
    ({"sigma": 0.0}, HyperparameterError, r"sigma=0\.0 .*> 0"),
    ({"sigma": -1.0}, HyperparameterError, r"sigma=-1\.0"),
    ({"sigma": float("nan")}, HyperparameterError, r"sigma=nan .*finite"),
    ({"num_samples": 0}, HyperparameterError, r"num_samples=0 .*>= 1"),
    ({"num_samples": 2.5}, HyperparameterError, r"num_samples=2\.5 .*integer"),
    ({"method": "central"}, HyperparameterError, r"method='central' .*'antithetic'"),
    ({"chunk_size": 0}, HyperparameterError, r"chunk_size=0"),
    ({"distribution": object()}, TypeError, r"distribution must have a sample\(sample_shape\)"),
    ({"argnums": "0"}, TypeError, r"argnums must be an int or a non-empty tuple of ints"),
    ({"argnums": (0, 0)}, ValueError, r"argnums=\(0, 0\) names the same argument twice"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_SETTINGS)
def test_bad_settings(kwargs, error, match):
    kwargs = {"distribution": NORMAL, **kwargs}
    with pytest.raises(error, match=match):
        zero_order(**kwargs)


def test_bad_settings_of_a_module_class():
    with pytest.raises(HyperparameterError, match=r"sigma=0"):

        class Bad(ZeroOrderGradientModule, sigma=0):
            pass


def _backward(fn, *args, **settings):
    zo = zero_order(settings.pop("distribution", NORMAL), num_samples=2, **settings)(fn)
    zo(*args).backward()


BAD_CALLS = [
    (lambda x: x * 2, (torch.ones(2, requires_grad=True),), {}, ValueError,
     r"must return a scalar tensor.*shape \(2,\)"),
    (lambda x: 1.0, (torch.ones(2, requires_grad=True),), {}, TypeError,
     r"must return a scalar tensor .*float"),
    (lambda x: x.sum(), (torch.ones(2, dtype=torch.int64),), {}, TypeError,
     r"argnums=\(0,\) .*floating-point tensors only; found Tensor of dtype torch.int64"),
    (lambda x: x.sum(), (torch.ones(2, requires_grad=True),), {"argnums": 1}, ValueError,
     r"argnums=\(1,\) refers to argument 1"),
    (lambda x: x.sum(), (torch.ones(2, requires_grad=True),),
     {"distribution": torch.distributions.Normal(torch.zeros(3), torch.ones(3))}, ValueError,
     r"must return a tensor of shape sample_shape; got \(2, 2, 3\)"),
]  # fmt: skip


@pytest.mark.parametrize(("fn", "args", "settings", "error", "match"), BAD_CALLS)
def test_bad_calls(fn, args, settings, error, match):
    with pytest.raises(error, match=match):
        _backward(fn, *args, **settings)


# --- TorchOpt 0.7.3's own tests, run on optcompile (import optcompile as torchopt) ------------


class FcNet(torch.nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.fc = torch.nn.Linear(in_features=dim, out_features=out, bias=True)

    def forward(self, x):
        return self.fc(x)


def _fc_data():
    torch.manual_seed(42)
    return FcNet(32, 1), torch.randn(8, 32) * 0.1, torch.randn(8, 1) * 0.1


@pytest.mark.parametrize("sigma", [0.01, 0.1, 1])
@pytest.mark.parametrize("method", METHODS)
def test_torchopt_functional_training(method, sigma):
    torchopt = optcompile
    model, x, y = _fc_data()
    params = tuple(model.parameters())
    names = [name for name, _ in model.named_parameters()]

    def fmodel(params, x):
        return torch.func.functional_call(model, dict(zip(names, params, strict=True)), (x,))

    @torchopt.diff.zero_order(distribution=torch.distributions.Normal(loc=0, scale=1),
                              method=method, argnums=0, sigma=sigma, num_samples=500)  # fmt: skip
    def forward_process(params, fn, x, y):
        return torch.nn.functional.mse_loss(fn(params, x), y)

    optimizer = torchopt.adam(lr=1e-2)
    opt_state = optimizer.init(params)
    losses = []
    for _ in range(5):
        loss = forward_process(params, fmodel, x, y)
        grads = torch.autograd.grad(loss, params)
        updates, opt_state = optimizer.update(grads, opt_state)
        params = torchopt.apply_updates(params, updates)
        losses.append(loss.item())
    if method != "naive":  # the unbiased, low-variance estimators descend
        assert losses[-1] < losses[0]


@pytest.mark.parametrize("sigma", [0.01, 0.1, 1])
@pytest.mark.parametrize("method", METHODS)
def test_torchopt_module_training(method, sigma):
    torchopt = optcompile

    class FcNetWithLoss(torchopt.nn.ZeroOrderGradientModule, method=method, sigma=sigma,
                        num_samples=500):  # fmt: skip
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.loss = torch.nn.MSELoss()
            self.distribution = torch.distributions.Normal(loc=0, scale=1)

        def forward(self, x, y):
            return self.loss(self.net(x), y)

        def sample(self, sample_shape=torch.Size()):  # noqa: B008
            return self.distribution.sample(sample_shape)

    net, x, y = _fc_data()
    model_with_loss = FcNetWithLoss(net)
    optimizer = torchopt.Adam(model_with_loss.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model_with_loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if method != "naive":
        assert losses[-1] < losses[0]


def test_torchopt_module_without_parameters():
    class MyModule(ZeroOrderGradientModule):
        def forward(self):
            return torch.tensor(0.0)

        def sample(self, sample_shape):
            return torch.tensor(0.0)

    with pytest.raises(RuntimeError, match="The module has no parameters"):
        MyModule()()


def test_torchopt_module_abstract_methods():
    class NoSample(ZeroOrderGradientModule):
        def forward(self):
            return torch.tensor(0.0)

    class NoForward(ZeroOrderGradientModule):
        def sample(self, sample_shape):
            return torch.tensor(0.0)

    for cls in (NoSample, NoForward):
        with pytest.raises(TypeError, match="Can't instantiate abstract class"):
            cls()
