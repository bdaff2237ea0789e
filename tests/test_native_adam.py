"""Native (C++) Adam kernels against a float64 pure-torch reference of the same formulas.

The reference forward and its hand-written safe backward live here; the backward is first
checked against torch.autograd and against central finite differences, then the kernels are
checked against it (forward, every cotangent, dtypes, strides, zeros, gradcheck, tracing).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

if shutil.which("c++") is None:
    pytest.skip(
        "no C++ compiler (c++) on PATH to build the native kernels", allow_module_level=True
    )


def _import_native() -> ModuleType:
    try:
        from optcompile.lowering.backends import native

        return native
    except ImportError:
        # TODO(integrator): drop this once optcompile.lowering is an importable package.
        name = "_optcompile_native_standalone"
        path = Path(__file__).resolve().parents[1] / "lowering" / "backends" / "native.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


native = _import_native()

HYPERS = {"b1": 0.8, "b2": 0.95, "eps": 1e-6, "eps_root": 1e-9}
ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}
T = 4


@pytest.fixture(scope="module")
def ops() -> ModuleType:
    # Building must succeed wherever a compiler exists: an error here fails the tests.
    native.build()
    return native


# ----------------------------------------------------------------------------- reference


def ref_forward(g, mu, nu, s, t, *, b1, b2, eps, eps_root):
    """Adam step, float64, plain torch ops (autograd-able)."""
    g, mu, nu, s = (x.double() for x in (g, mu, nu, s))
    new_mu = b1 * mu + (1 - b1) * g
    new_nu = b2 * nu + (1 - b2) * g * g
    mh = new_mu / (1 - b1**t)
    denom = torch.sqrt(new_nu / (1 - b2**t) + eps_root) + eps
    return s * (mh / denom), new_mu, new_nu


def ref_backward(u_bar, m_bar, v_bar, g, mu, nu, s, t, *, b1, b2, eps, eps_root):
    """The safe VJP: exact, with d sqrt(x)/dx = 0 at x = 0. Returns (g, mu, nu, s) grads."""
    g, mu, nu, s, u_bar = (x.double() for x in (g, mu, nu, s, u_bar))
    m_bar = torch.zeros_like(g) if m_bar is None else m_bar.double()
    v_bar = torch.zeros_like(g) if v_bar is None else v_bar.double()
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    new_mu = b1 * mu + (1 - b1) * g
    new_nu = b2 * nu + (1 - b2) * g * g
    mh = new_mu / bc1
    x = new_nu / bc2 + eps_root
    r = torch.sqrt(x)
    denom = r + eps
    dsqrt = torch.where(x > 0, 0.5 / r, torch.zeros_like(r))
    big_m = m_bar + u_bar * s / (bc1 * denom)
    big_v = v_bar - u_bar * s * mh / denom**2 * dsqrt / bc2
    grad_g = (1 - b1) * big_m + 2 * (1 - b2) * g * big_v
    return grad_g, b1 * big_m, b2 * big_v, (u_bar * mh / denom).sum()


def _inputs(shape=(6, 4), dtype=torch.float64, seed=0):
    """Random (g, mu, nu, step_size) away from 0, and cotangents (U, M', V')."""
    gen = torch.Generator().manual_seed(seed)

    def rand(lo=-1.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)

    g, mu, nu = rand(), 0.1 * rand(), rand(0.1, 1.0)
    s = torch.tensor(-0.01, dtype=dtype)
    return (g, mu, nu, s), (rand(), rand(), rand())


def _close(actual, expected, rtol):
    # Scale-aware atol: entries near 0 are judged against the tensor's magnitude.
    expected = expected.double()
    atol = rtol * (expected.abs().max().item() if expected.numel() else 0.0)
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


def test_reference_backward_matches_autograd():
    (g, mu, nu, s), cots = _inputs()
    leaves = [x.clone().requires_grad_() for x in (g, mu, nu, s)]
    outs = ref_forward(*leaves, T, **HYPERS)
    expected = torch.autograd.grad(outs, leaves, cots)
    for got, want in zip(ref_backward(*cots, g, mu, nu, s, T, **HYPERS), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_reference_backward_matches_finite_differences():
    (g, mu, nu, s), cots = _inputs(shape=(5,), seed=1)
    directions = [torch.randn_like(x, dtype=torch.float64) for x in (g, mu, nu, s)]

    def objective(h):
        point = [x + h * d for x, d in zip((g, mu, nu, s), directions, strict=True)]
        return sum(
            (c * o).sum() for c, o in zip(cots, ref_forward(*point, T, **HYPERS), strict=True)
        )

    h = 1e-6
    numeric = (objective(h) - objective(-h)) / (2 * h)
    grads = ref_backward(*cots, g, mu, nu, s, T, **HYPERS)
    analytic = sum((gr * d).sum() for gr, d in zip(grads, directions, strict=True))
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------- kernels


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if kind == "transposed":
        return x.t().contiguous().t()
    if kind == "sliced":
        big = torch.zeros(2 * x.shape[0], 3 * x.shape[1], dtype=x.dtype)
        big[::2, ::3] = x
        return big[::2, ::3]
    return x


LAYOUTS = ["contiguous", "transposed", "sliced"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_forward_matches_reference(ops, dtype, rtol, layout):
    (g, mu, nu, s), _ = _inputs(dtype=dtype)
    args = [_layout(x, layout) for x in (g, mu, nu)]
    assert layout == "contiguous" or not args[0].is_contiguous()
    outs = torch.ops.optcompile.adam_forward(*args, s, torch.tensor(T), *HYPERS.values())
    for got, want in zip(outs, ref_forward(g, mu, nu, s, T, **HYPERS), strict=True):
        assert got.shape == g.shape and got.dtype == dtype and got.is_contiguous()
        _close(got, want, rtol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_backward_matches_reference(ops, dtype, rtol, layout):
    (g, mu, nu, s), cots = _inputs(dtype=dtype)
    args = [_layout(x, layout) for x in (*cots, g, mu, nu)]
    grads = torch.ops.optcompile.adam_backward(*args, s, torch.tensor(T), *HYPERS.values())
    for got, want in zip(grads, ref_backward(*cots, g, mu, nu, s, T, **HYPERS), strict=True):
        assert got.dtype == dtype
        _close(got, want, rtol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_reference(ops, dtype):
    (g, mu, nu, s), cots = _inputs(dtype=dtype)
    outs = torch.ops.optcompile.adam_forward(g, mu, nu, s, torch.tensor(T), *HYPERS.values())
    for got, want in zip(outs, ref_forward(g, mu, nu, s, T, **HYPERS), strict=True):
        assert got.dtype == dtype
        _close(got, want, 2e-2)
    grads = torch.ops.optcompile.adam_backward(
        *cots, g, mu, nu, s, torch.tensor(T), *HYPERS.values()
    )
    for got, want in zip(grads, ref_backward(*cots, g, mu, nu, s, T, **HYPERS), strict=True):
        _close(got, want, 2e-2)


@pytest.mark.parametrize("count_dtype", [torch.int64, torch.int32, torch.float32, torch.float64])
def test_count_dtype(ops, count_dtype):
    (g, mu, nu, s), _ = _inputs()
    count = torch.tensor(T, dtype=count_dtype)
    outs = torch.ops.optcompile.adam_forward(g, mu, nu, s, count, *HYPERS.values())
    _close(outs[0], ref_forward(g, mu, nu, s, T, **HYPERS)[0], 1e-12)


@pytest.mark.parametrize("shape", [(), (0, 3), (3, 1, 2)])
def test_shapes(ops, shape):
    (g, mu, nu, s), cots = _inputs(shape=shape)
    outs = torch.ops.optcompile.adam_forward(g, mu, nu, s, torch.tensor(T), *HYPERS.values())
    grads = torch.ops.optcompile.adam_backward(
        *cots, g, mu, nu, s, torch.tensor(T), *HYPERS.values()
    )
    assert all(o.shape == shape for o in (*outs, *grads[:3])) and grads[3].shape == ()
    for got, want in zip(outs, ref_forward(g, mu, nu, s, T, **HYPERS), strict=True):
        _close(got, want, 1e-12)
    for got, want in zip(grads, ref_backward(*cots, g, mu, nu, s, T, **HYPERS), strict=True):
        _close(got, want, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_gradient_and_zero_state(ops, dtype):
    # Half the elements have g = mu = nu = 0 (x = 0): naive autograd gives NaN there.
    (g, _, _, s), cots = _inputs(shape=(8,), dtype=dtype)
    g[::2] = 0
    zero = torch.zeros_like(g)
    outs = torch.ops.optcompile.adam_forward(g, zero, zero, s, torch.tensor(1), *ADAM.values())
    grads = torch.ops.optcompile.adam_backward(
        *cots, g, zero, zero, s, torch.tensor(1), *ADAM.values()
    )
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for got, want in zip(outs, ref_forward(g, zero, zero, s, 1, **ADAM), strict=True):
        assert torch.isfinite(got).all()
        _close(got, want, rtol)
    for got, want in zip(grads, ref_backward(*cots, g, zero, zero, s, 1, **ADAM), strict=True):
        assert torch.isfinite(got).all()
        _close(got, want, rtol)
    leaves = [x.double().requires_grad_() for x in (g, zero, zero)]
    naive = torch.autograd.grad(ref_forward(*leaves, s, 1, **ADAM), leaves, cots)
    assert not torch.isfinite(naive[2]).all()  # why the safe rule exists


def test_derivative_at_zero_is_minus_step_over_eps(ops):
    # One step from m = v = 0, t = 1, g = [c, 0]: d update / dc at c = 0 is s / eps exactly.
    s = torch.tensor(-1e-3, dtype=torch.float64)
    c = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(2, dtype=torch.float64)
    update, _, _ = native.adam_step(c, zero, zero, s, torch.tensor(1), **ADAM)
    update.backward(torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(
        c.grad, torch.full((2,), -1e5, dtype=torch.float64), rtol=1e-12, atol=0
    )

    def u0(value):
        return ref_forward(torch.tensor([value, 0.0]), zero, zero, s, 1, **ADAM)[0][0]

    h = 1e-14  # far below eps / sqrt(1 - b2) so |c| in the denominator is negligible
    assert (u0(h) - u0(-h)) / (2 * h) == pytest.approx(-1e5, rel=1e-4)
    naive = c.detach().clone().requires_grad_()
    ref_forward(naive, zero, zero, s, 1, **ADAM)[0].sum().backward()
    assert torch.isnan(naive.grad).all()


@pytest.mark.parametrize("which", ["update", "new_mu", "new_nu", "new_mu+new_nu"])
def test_absent_cotangents(ops, which):
    (g, mu, nu, s), cots = _inputs(dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (g, mu, nu, s)]
    outs = native.adam_step(*leaves, torch.tensor(T), **HYPERS)
    names = ["update", "new_mu", "new_nu"]
    used = [i for i, n in enumerate(names) if n in which.split("+")]
    grads = torch.autograd.grad([outs[i] for i in used], leaves, [cots[i] for i in used])
    given = [cots[i] if i in used else None for i in range(3)]
    u_bar = given[0] if given[0] is not None else torch.zeros_like(g)
    for got, want in zip(
        grads, ref_backward(u_bar, *given[1:], g, mu, nu, s, T, **HYPERS), strict=True
    ):
        _close(got, want, 1e-12)


@pytest.mark.parametrize("g_dtype", [torch.float32, torch.float64])
def test_grad_step_size(ops, g_dtype):
    # 100_000 elements span several kernel blocks (and threads); step_size stays float64.
    (g, mu, nu, _), cots = _inputs(shape=(100_000,), dtype=g_dtype, seed=2)
    s = torch.tensor(-0.01, dtype=torch.float64, requires_grad=True)
    update, _, _ = native.adam_step(g, mu, nu, s, torch.tensor(T), **HYPERS)
    (grad_s,) = torch.autograd.grad(update, s, cots[0])
    assert grad_s.dtype == torch.float64 and grad_s.shape == ()
    want = ref_backward(cots[0], None, None, g, mu, nu, s.detach(), T, **HYPERS)[3]
    _close(grad_s, want, 1e-5 if g_dtype == torch.float32 else 1e-12)


def test_gradcheck(ops):
    (g, mu, nu, s), _ = _inputs(shape=(3, 2), seed=3)
    leaves = [x.clone().requires_grad_() for x in (g, mu, nu, s)]

    def step(g, mu, nu, s):
        return native.NativeAdamFunction.apply(g, mu, nu, s, torch.tensor(T), *HYPERS.values())

    assert torch.autograd.gradcheck(step, leaves)


def test_create_graph_raises(ops):
    (g, mu, nu, s), _ = _inputs()
    g.requires_grad_()
    update, _, _ = native.adam_step(g, mu, nu, s, torch.tensor(T), **HYPERS)
    with pytest.raises(RuntimeError, match=r'not itself differentiable.*backend="eager"'):
        torch.autograd.grad(update.sum(), g, create_graph=True)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mu": torch.zeros(3)}, r"mu must have g's shape"),
        ({"nu": torch.zeros(6, 4, dtype=torch.float32)}, r"nu must have g's dtype"),
        ({"step_size": torch.tensor([-0.01])}, r"step_size must be a 0-d floating tensor"),
        ({"count": torch.tensor([1])}, r"count must be a 0-d tensor"),
    ],
)
def test_bad_inputs(ops, change, match):
    (g, mu, nu, s), _ = _inputs()
    args = {"g": g, "mu": mu, "nu": nu, "step_size": s, "count": torch.tensor(T)} | change
    with pytest.raises(RuntimeError, match=match):
        torch.ops.optcompile.adam_forward(*args.values(), *HYPERS.values())


def test_is_available(ops):
    assert native.is_available("cpu") and native.is_available(torch.device("cpu"))
    assert not native.is_available("meta")
    assert not native.is_available("not-a-device")
    if not torch.cuda.is_available():
        assert not native.is_available("cuda") and not native.is_available(0)


def test_fake_impls_opcheck(ops):
    # Schema, FakeTensor and AOT-dispatch consistency of both ops (no Inductor involved).
    (g, mu, nu, s), cots = _inputs(dtype=torch.float32)
    count = torch.tensor(T)
    torch.library.opcheck(
        torch.ops.optcompile.adam_forward.default, (g, mu, nu, s, count, *HYPERS.values())
    )
    torch.library.opcheck(
        torch.ops.optcompile.adam_backward.default,
        (cots[0], None, cots[2], g, mu, nu, s, count, *HYPERS.values()),
    )


# Importing Inductor imports torch.utils.mkldnn, which warns on Python < 3.14 (torch 2.13).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_traces_under_torch_compile(ops):
    # The only Inductor compile in this file (~10-15 s): the fake impl lets fullgraph trace.
    (g, mu, nu, s), _ = _inputs(dtype=torch.float32)
    count = torch.tensor(T)

    def step(g, mu, nu, s, count):
        update, new_mu, new_nu = torch.ops.optcompile.adam_forward(
            g, mu, nu, s, count, *HYPERS.values()
        )
        return update * 2, new_mu, new_nu

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(g, mu, nu, s, count), step(g, mu, nu, s, count), strict=True):
        torch.testing.assert_close(got, want)
