"""The native (C++) Adam against the Adam rule's eager kernel and its derived safe VJP.

The rule is the single source of truth, so there is no hand-written reference here: the kernels
of ``optcompile.adam`` (``scale_by_adam`` then ``-lr``, fused) and of ``scale_by_adam`` (step
size 1) run through ``apply_kernel`` on the eager and on the native backend, and the forward and
every cotangent (g, mu, nu, lr) must agree. The native VJP is then checked against float64
finite differences and gradcheck, and the raw ops against their schema (opcheck), tracing under
torch.compile, bad inputs and the availability probe.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import optcompile
from optcompile.lowering.autograd import apply_kernel
from optcompile.lowering.backends import get_backend, native_ops
from optcompile.rules.adam import scale_by_adam

if shutil.which("c++") is None:
    pytest.skip(
        "no C++ compiler (c++) on PATH to build the native kernels", allow_module_level=True
    )

HYPERS = {"b1": 0.8, "b2": 0.95, "eps": 1e-6, "eps_root": 1e-9}
ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0}
LR = 1e-2
T = 4
SHAPES = [(6, 4), (5, 3)]  # two leaves: the multi-tensor path and lr's sum over leaves
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}

# "adam*-lr": scalars (b1, b2, eps, eps_root, lr, count); "adam": (b1, b2, eps, eps_root, count).
KERNELS = {
    "adam*-lr": optcompile.adam(lr=torch.tensor(LR, dtype=torch.float64)).units[0].kernel,
    "adam": scale_by_adam.kernel,
}


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    # Building must succeed wherever a compiler exists: an error here fails the tests.
    native_ops.build()


def _scalars(name, t=T, hypers=HYPERS, lr=LR, grad=("lr",)):
    """The kernel's 0-d float64 scalars; those named in ``grad`` require grad."""
    values = {**hypers, **({"lr": lr} if name == "adam*-lr" else {}), "count": float(t)}
    return [
        torch.tensor(float(v), dtype=torch.float64, requires_grad=k in grad)
        for k, v in values.items()
    ]


def _inputs(dtype=torch.float64, shapes=SHAPES, seed=0):
    """Per leaf: g, mu (small) and nu (positive), away from 0; cotangents of the 3 outputs."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, lo=-1.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)

    tensors = [[rand(s) for s in shapes], [rand(s, -0.1, 0.1) for s in shapes]]
    tensors.append([rand(s, 0.1, 1.0) for s in shapes])
    return tensors, [[rand(s) for s in shapes] for _ in range(3)]


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if kind == "transposed":
        return x.t().contiguous().t()
    if kind == "sliced":
        big = torch.zeros(2 * x.shape[0], 3 * x.shape[1], dtype=x.dtype)
        big[::2, ::3] = x
        return big[::2, ::3]
    return x


def _leaves(tensors, layout="contiguous", dtype=None):
    return [
        [_layout(x.detach().to(dtype or x.dtype), layout).requires_grad_() for x in column]
        for column in tensors
    ]


def _run(backend, name, tensors, scalars, cotangents, used=(0, 1, 2)):
    """Outputs, and the VJP of the outputs in ``used`` into every input that requires grad."""
    outputs = apply_kernel(
        KERNELS[name], get_backend(backend), tensors, scalars, differentiable=True
    )
    wrt = [x for column in tensors for x in column if x.requires_grad]
    wrt += [s for s in scalars if s.requires_grad]
    grads = torch.autograd.grad(
        [o for k in used for o in outputs[k]],
        wrt,
        [c for k in used for c in cotangents[k]],
        materialize_grads=True,  # lr does not reach new_mu, new_nu
    )
    return [o.detach() for column in outputs for o in column], list(grads)


def _close(actual, expected, rtol):
    # Scale-aware atol: entries near 0 are judged against the tensor's magnitude.
    expected = expected.double()
    atol = rtol * (expected.abs().max().item() if expected.numel() else 0.0)
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


def _assert_all_close(got, want, rtol):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        _close(a, b, rtol)


# ------------------------------------------------------------ native == the rule (eager)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", KERNELS)
def test_matches_eager(name, dtype, layout):
    tensors, cots = _inputs(dtype)
    leaves = _leaves(tensors, layout)
    assert layout == "contiguous" or not leaves[0][0].is_contiguous()
    scalars = _scalars(name)
    out, grads = _run("native", name, leaves, scalars, cots)
    want_out, want_grads = _run("eager", name, leaves, scalars, cots)
    assert all(o.dtype == dtype and o.is_contiguous() for o in out)
    assert len(grads) == 3 * len(SHAPES) + (name == "adam*-lr")  # g, mu, nu per leaf (+ lr)
    _assert_all_close(out, want_out, RTOL[dtype])
    _assert_all_close(grads, want_grads, RTOL[dtype])


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (1, 2)], ids=str)
def test_absent_cotangents(used):
    tensors, cots = _inputs()
    leaves, scalars = _leaves(tensors), _scalars("adam*-lr")
    _, grads = _run("native", "adam*-lr", leaves, scalars, cots, used)
    _, want = _run("eager", "adam*-lr", leaves, scalars, cots, used)
    _assert_all_close(grads, want, 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision(dtype):
    # Against the rule in float64 on the same (rounded) values: native computes in float and
    # rounds once per output, as eager in float64 then rounded would.
    tensors, cots = _inputs(dtype)
    scalars = _scalars("adam*-lr")
    out, grads = _run("native", "adam*-lr", _leaves(tensors), scalars, cots)
    assert all(o.dtype == dtype for o in out)
    wide = [[c.double() for c in column] for column in cots]
    want_out, want_grads = _run(
        "eager", "adam*-lr", _leaves(tensors, dtype=torch.float64), scalars, wide
    )
    _assert_all_close(out, want_out, 2e-2)
    _assert_all_close(grads, want_grads, 2e-2)


@pytest.mark.parametrize("shape", [(), (0, 3), (3, 1, 2)], ids=str)
def test_shapes(shape):
    tensors, cots = _inputs(shapes=[shape])
    leaves, scalars = _leaves(tensors), _scalars("adam*-lr")
    out, grads = _run("native", "adam*-lr", leaves, scalars, cots)
    want_out, want_grads = _run("eager", "adam*-lr", leaves, scalars, cots)
    _assert_all_close(out, want_out, 1e-12)
    _assert_all_close(grads, want_grads, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", KERNELS)
def test_zero_gradient_and_zero_state(name, dtype):
    # Half the elements have g = mu = nu = 0 at t = 1, so v' = 0: the safe sqrt rule's case,
    # where autograd of the plain formula gives inf * 0 = NaN.
    tensors, cots = _inputs(dtype, shapes=[(8,)])
    tensors[0][0][::2] = 0
    tensors[1][0].zero_()
    tensors[2][0].zero_()
    leaves, scalars = _leaves(tensors), _scalars(name, t=1, hypers=ADAM)
    out, grads = _run("native", name, leaves, scalars, cots)
    want_out, want_grads = _run("eager", name, leaves, scalars, cots)
    assert all(torch.isfinite(x).all() for x in [*out, *grads])
    _assert_all_close(out, want_out, RTOL[dtype])
    _assert_all_close(grads, want_grads, RTOL[dtype])


@pytest.mark.parametrize("backend", ["native", "eager"])
def test_derivative_at_zero_is_minus_lr_over_eps(backend):
    # One step from m = v = 0, t = 1, g = c: u = -lr c / (|c| + eps), so du/dc at 0 is -lr/eps.
    zeros = [[torch.zeros(2, dtype=torch.float64)] for _ in range(3)]
    zeros[0][0].requires_grad_()
    scalars = _scalars("adam*-lr", t=1, hypers=ADAM, lr=1e-3, grad=())
    (update,), _, _ = apply_kernel(
        KERNELS["adam*-lr"], get_backend(backend), zeros, scalars, differentiable=True
    )
    (grad,) = torch.autograd.grad(update.sum(), zeros[0][0])
    torch.testing.assert_close(
        grad, torch.full((2,), -1e5, dtype=torch.float64), rtol=1e-12, atol=0
    )

    def u0(value):
        point = [[torch.tensor([value, 0.0], dtype=torch.float64)], zeros[1], zeros[2]]
        return apply_kernel(
            KERNELS["adam*-lr"], get_backend("eager"), point, scalars, differentiable=False
        )[0][0][0]

    h = 1e-14  # far below eps, so |c| in the denominator is negligible
    assert (u0(h) - u0(-h)) / (2 * h) == pytest.approx(-1e5, rel=1e-4)


def test_vjp_matches_finite_differences():
    # Directional derivative of <cotangents, rule forward> in float64 against the native VJP.
    tensors, cots = _inputs(shapes=[(5,)], seed=1)
    gen = torch.Generator().manual_seed(2)
    flat = [x for column in tensors for x in column] + [torch.tensor(LR, dtype=torch.float64)]
    directions = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in flat]

    def objective(h):
        g, mu, nu, lr = (x + h * d for x, d in zip(flat, directions, strict=True))
        scalars = _scalars("adam*-lr", lr=lr, grad=())
        outputs = apply_kernel(
            KERNELS["adam*-lr"],
            get_backend("eager"),
            [[g], [mu], [nu]],
            scalars,
            differentiable=False,
        )
        return sum((c[0] * o[0]).sum() for c, o in zip(cots, outputs, strict=True))

    h = 1e-6
    numeric = (objective(h) - objective(-h)) / (2 * h)
    _, grads = _run("native", "adam*-lr", _leaves(tensors), _scalars("adam*-lr"), cots)
    analytic = sum((gr * d).sum() for gr, d in zip(grads, directions, strict=True))
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", KERNELS)
def test_gradcheck(name):
    tensors, _ = _inputs(shapes=[(3, 2), (2,)], seed=3)
    flat = [x.requires_grad_() for column in tensors for x in column]
    scalars = _scalars(name)
    n_leaves = len(tensors[0])

    def step(*inputs):
        lists = [list(inputs[j * n_leaves : (j + 1) * n_leaves]) for j in range(3)]
        rest = list(inputs[3 * n_leaves :])
        mixed = [*scalars[:4], *rest, scalars[-1]]
        outputs = apply_kernel(
            KERNELS[name], get_backend("native"), lists, mixed, differentiable=True
        )
        return tuple(o for column in outputs for o in column)

    lr = scalars[4:5] if name == "adam*-lr" else []
    assert torch.autograd.gradcheck(step, [*flat, *lr])


def test_learnable_beta_uses_eager_vjp():
    # The C++ backward has no beta/eps gradients; native's VJP hands such variants to eager.
    tensors, cots = _inputs()
    leaves, scalars = _leaves(tensors), _scalars("adam*-lr", grad=("b1", "eps", "lr"))
    _, grads = _run("native", "adam*-lr", leaves, scalars, cots)
    _, want = _run("eager", "adam*-lr", leaves, scalars, cots)
    _assert_all_close(grads, want, 1e-12)


def test_create_graph_runs_the_eager_vjp():
    # A backward that is itself differentiated runs the eager VJP (torch ops), so second-order
    # gradients through a native step are those of the rule.
    tensors, cots = _inputs()

    def second_order(backend):
        leaves, scalars = _leaves(tensors), _scalars("adam*-lr")
        outputs = apply_kernel(
            KERNELS["adam*-lr"], get_backend(backend), leaves, scalars, differentiable=True
        )
        (dg,) = torch.autograd.grad(outputs[0][0], leaves[0][0], cots[0][0], create_graph=True)
        return torch.autograd.grad((dg * dg).sum(), [leaves[0][0], scalars[4]])

    _assert_all_close(second_order("native"), second_order("eager"), 1e-12)


# --------------------------------------------------------------------------------- raw ops


def _op_inputs(dtype=torch.float64):
    """One leaf's (g, mu, nu, step_size, count), cotangents, for the ops themselves."""
    tensors, cots = _inputs(dtype, shapes=[(6, 4)])
    step_size = torch.tensor(-LR, dtype=dtype)
    return (*(c[0] for c in tensors), step_size, torch.tensor(T)), [c[0] for c in cots]


@pytest.mark.parametrize(
    "count_dtype", [torch.int64, torch.int32, torch.float32, torch.float64], ids=str
)
def test_count_dtype(count_dtype):
    (g, mu, nu, s, _), _ = _op_inputs()
    got = torch.ops.optcompile.adam_forward(
        g, mu, nu, s, torch.tensor(T, dtype=count_dtype), *HYPERS.values()
    )
    want = apply_kernel(
        KERNELS["adam*-lr"],
        get_backend("eager"),
        [[g], [mu], [nu]],
        _scalars("adam*-lr", grad=()),
        differentiable=False,
    )
    _assert_all_close(got, [column[0] for column in want], 1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"mu": torch.zeros(3)}, r"mu must have g's shape"),
        ({"nu": torch.zeros(6, 4, dtype=torch.float32)}, r"nu must have g's dtype"),
        ({"step_size": torch.tensor([-0.01])}, r"step_size must be a 0-d floating tensor"),
        ({"count": torch.tensor([1])}, r"count must be a 0-d tensor"),
    ],
)
def test_bad_inputs(change, match):
    (g, mu, nu, s, count), _ = _op_inputs()
    args = {"g": g, "mu": mu, "nu": nu, "step_size": s, "count": count} | change
    with pytest.raises(RuntimeError, match=match):
        torch.ops.optcompile.adam_forward(*args.values(), *HYPERS.values())


def test_is_available():
    assert native_ops.is_available("cpu") and native_ops.is_available(torch.device("cpu"))
    assert not native_ops.is_available("meta")
    assert not native_ops.is_available("not-a-device")
    if not torch.cuda.is_available():
        assert not native_ops.is_available("cuda") and not native_ops.is_available(0)


def test_fake_impls_opcheck():
    # Schema, FakeTensor and AOT-dispatch consistency of both ops (no Inductor involved).
    (g, mu, nu, s, count), cots = _op_inputs(torch.float32)
    torch.library.opcheck(
        torch.ops.optcompile.adam_forward.default, (g, mu, nu, s, count, *HYPERS.values())
    )
    torch.library.opcheck(
        torch.ops.optcompile.adam_backward.default,
        (cots[0], None, cots[2], g, mu, nu, s, count, *HYPERS.values()),
    )


# Importing Inductor imports torch.utils.mkldnn, which warns on Python < 3.14 (torch 2.13).
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_traces_under_torch_compile():
    # The only Inductor compile in this file (~10-15 s cold): the fake impl lets fullgraph trace.
    (g, mu, nu, s, count), _ = _op_inputs(torch.float32)

    def step(g, mu, nu, s, count):
        update, new_mu, new_nu = torch.ops.optcompile.adam_forward(
            g, mu, nu, s, count, *HYPERS.values()
        )
        return update * 2, new_mu, new_nu

    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(g, mu, nu, s, count), step(g, mu, nu, s, count), strict=True):
        torch.testing.assert_close(got, want)
