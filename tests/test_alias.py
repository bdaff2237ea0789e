"""The functional optimizers against torch.optim, step by step, and closed forms where it has none.

Each run trains a pytree of parameters (a dict holding a tuple, a 0-d tensor and a 3-d tensor) on
a deterministic non-quadratic problem for 50 steps, once with optcompile and once with the
torch.optim class given the same hyper-parameters, and compares the final parameters. float64 runs
use ``inplace=False`` (the differentiable path), float32 runs ``inplace=True``.
"""

from __future__ import annotations

import optree
import pytest
import torch
from torch import optim

import optcompile
from optcompile.schedule import exponential_decay, linear_schedule

# The eager backend is the oracle: these tests pin the maths, compiled backends are compared
# with it elsewhere (and would spend seconds compiling each of these chains).
B = "eager"
STEPS = 50


def _params(dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)

    def r(*shape):  # drawn in float64, so that both dtypes solve the same problem
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    return {"layer": (r(4, 3), r(3)), "scale": r(()), "table": r(2, 2, 2)}


def _grad_fn(dtype: torch.dtype, sign: float = 1.0):
    """The gradient of sum(h/2 (p - c)^2 + 0.1 cos(3 p)) leafwise (negated when ``sign`` = -1).

    ``sign=-1`` is for ``maximize=True``: ascending the negated loss is descending the loss, so
    both runs stay bounded.
    """
    gen = torch.Generator().manual_seed(1)
    like = _params(dtype)
    f64 = torch.float64
    h = optree.tree_map(lambda p: 0.5 + 1.5 * torch.rand(p.shape, generator=gen, dtype=f64), like)
    c = optree.tree_map(lambda p: torch.randn(p.shape, generator=gen, dtype=f64), like)
    h, c = optree.tree_map(lambda t: t.to(dtype), (h, c))

    def grad(params):
        return optree.tree_map(
            lambda p, hh, cc: sign * (hh * (p - cc) - 0.3 * torch.sin(3 * p)), params, h, c
        )

    return grad


def _run_optcompile(tx, dtype, sign=1.0, inplace=None, grads_hook=None):
    inplace = dtype != torch.float64 if inplace is None else inplace
    params, grad = _params(dtype), _grad_fn(dtype, sign)
    state = tx.init(params)
    for k in range(STEPS):
        grads = grad(params)
        if grads_hook is not None:
            grads = grads_hook(k, grads)
        updates, state = tx.update(grads, state, params=params, inplace=inplace)
        params = optcompile.apply_updates(params, updates, inplace=inplace)
    return params


def _run_torch(make_optimizer, dtype, sign=1.0, lrs=None, grads_hook=None):
    leaves, spec = optree.tree_flatten(_params(dtype))
    grad = _grad_fn(dtype, sign)
    optimizer = make_optimizer(leaves)
    for k in range(STEPS):
        grads = grad(optree.tree_unflatten(spec, leaves))
        if grads_hook is not None:
            grads = grads_hook(k, grads)
        for p, g in zip(leaves, optree.tree_leaves(grads, none_is_leaf=True), strict=True):
            p.grad = g
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = lrs[k]
        optimizer.step()
    return optree.tree_unflatten(spec, leaves)


def _assert_trees_close(actual, expected, dtype):
    if dtype == torch.float64:
        rtol, atol = 1e-10, 1e-12
    else:  # a few ulps per step, accumulated over the run
        rtol = atol = 4 * torch.finfo(torch.float32).eps * STEPS
    a_leaves, a_spec = optree.tree_flatten(actual)
    e_leaves, e_spec = optree.tree_flatten(expected)
    assert a_spec == e_spec
    for a, e in zip(a_leaves, e_leaves, strict=True):
        assert a.dtype == dtype and a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


# The AdamW mask: decay the matrix and the 3-d table only (not the bias, not the 0-d scale).
_MASK = {"layer": (True, False), "scale": False, "table": True}


def _masked_groups(leaves, weight_decay):
    keep = optree.tree_leaves(_MASK)
    return [
        {"params": [p for p, m in zip(leaves, keep, strict=True) if m]},
        {"params": [p for p, m in zip(leaves, keep, strict=True) if not m], "weight_decay": 0.0},
    ]


# (optcompile transformation, the torch.optim optimizer of the same hyper-parameters, gradient
# sign). A representative set of flag combinations, not the Cartesian grid.
CASES = [
    pytest.param(
        lambda: optcompile.sgd(0.05, backend=B), lambda ps: optim.SGD(ps, lr=0.05), 1.0, id="sgd"
    ),
    pytest.param(
        lambda: optcompile.sgd(0.05, momentum=0.9, dampening=0.3, weight_decay=0.02, backend=B),
        lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.02),
        1.0,
        id="sgd-momentum-dampening-wd",
    ),
    pytest.param(
        lambda: optcompile.sgd(0.03, 0.8, nesterov=True, maximize=True, backend=B),
        lambda ps: optim.SGD(ps, lr=0.03, momentum=0.8, nesterov=True, maximize=True),
        -1.0,
        id="sgd-nesterov-maximize",
    ),
    pytest.param(
        lambda: optcompile.adam(0.02, backend=B), lambda ps: optim.Adam(ps, lr=0.02), 1.0, id="adam"
    ),
    pytest.param(
        lambda: optcompile.adam(
            0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True, backend=B
        ),
        lambda ps: optim.Adam(
            ps, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, maximize=True
        ),
        -1.0,
        id="adam-wd-maximize",
    ),
    pytest.param(
        lambda: optcompile.adamw(0.02, weight_decay=0.1, backend=B),
        lambda ps: optim.AdamW(ps, lr=0.02, weight_decay=0.1),
        1.0,
        id="adamw",
    ),
    pytest.param(
        lambda: optcompile.adamw(
            0.02, betas=(0.85, 0.995), weight_decay=0.2, mask=_MASK, maximize=True, backend=B
        ),
        lambda ps: optim.AdamW(
            _masked_groups(ps, 0.2), lr=0.02, betas=(0.85, 0.995), weight_decay=0.2, maximize=True
        ),
        -1.0,
        id="adamw-mask-maximize",
    ),
    pytest.param(
        lambda: optcompile.adamw(0.02, weight_decay=0.2, mask=lambda p: _MASK, backend=B),
        lambda ps: optim.AdamW(_masked_groups(ps, 0.2), lr=0.02, weight_decay=0.2),
        1.0,
        id="adamw-callable-mask",
    ),
    pytest.param(
        lambda: optcompile.adamax(0.02, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05, backend=B),
        lambda ps: optim.Adamax(ps, lr=0.02, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05),
        1.0,
        id="adamax-wd",
    ),
    pytest.param(
        lambda: optcompile.adagrad(
            0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.02, backend=B
        ),
        lambda ps: optim.Adagrad(
            ps, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.02
        ),
        1.0,
        id="adagrad-lr_decay-initial-wd",
    ),
    pytest.param(
        lambda: optcompile.adagrad(0.1, eps=1e-8, maximize=True, backend=B),
        lambda ps: optim.Adagrad(ps, lr=0.1, eps=1e-8, maximize=True),
        -1.0,
        id="adagrad-maximize",
    ),
    pytest.param(
        lambda: optcompile.adadelta(1.0, rho=0.8, eps=1e-6, weight_decay=0.05, backend=B),
        lambda ps: optim.Adadelta(ps, lr=1.0, rho=0.8, eps=1e-6, weight_decay=0.05),
        1.0,
        id="adadelta-wd",
    ),
    pytest.param(
        lambda: optcompile.radam(0.02, eps=1e-8, backend=B),
        lambda ps: optim.RAdam(ps, lr=0.02, eps=1e-8),
        1.0,
        id="radam",
    ),
    pytest.param(
        lambda: optcompile.radam(0.02, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.05, backend=B),
        lambda ps: optim.RAdam(ps, lr=0.02, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.05),
        1.0,
        id="radam-wd",
    ),
    pytest.param(
        lambda: optcompile.rmsprop(0.01, backend=B),
        lambda ps: optim.RMSprop(ps, lr=0.01),
        1.0,
        id="rmsprop",
    ),
    pytest.param(
        lambda: optcompile.rmsprop(
            0.01, alpha=0.9, weight_decay=0.05, momentum=0.5, centered=True, backend=B
        ),
        lambda ps: optim.RMSprop(
            ps, lr=0.01, alpha=0.9, weight_decay=0.05, momentum=0.5, centered=True
        ),
        1.0,
        id="rmsprop-centered-momentum-wd",
    ),
    pytest.param(
        lambda: optcompile.rmsprop(0.01, momentum=0.7, maximize=True, backend=B),
        lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.7, maximize=True),
        -1.0,
        id="rmsprop-momentum-maximize",
    ),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("make_tx, make_torch, sign", CASES)
def test_alias_matches_torch_optim(make_tx, make_torch, sign, dtype):
    actual = _run_optcompile(make_tx(), dtype, sign)
    expected = _run_torch(make_torch, dtype, sign)
    _assert_trees_close(actual, expected, dtype)


def test_the_problem_moves_the_parameters():
    """Guard against a vacuous comparison: 50 steps change every leaf by far more than the tol."""
    trained = _run_torch(lambda ps: optim.Adam(ps, lr=0.02), torch.float64)
    for p, p0 in zip(
        optree.tree_leaves(trained), optree.tree_leaves(_params(torch.float64)), strict=True
    ):
        assert (p - p0).abs().min() > 1e-3


# Closed forms for what torch.optim lacks (float64 references written from the TorchOpt maths).


def _closed_form(step_fn, dtype=torch.float64, sign=1.0):
    """Run ``step_fn(k, p, g, slot) -> delta`` leafwise, ``slot`` a dict kept per leaf."""
    leaves, spec = optree.tree_flatten(_params(dtype))
    slots = [{} for _ in leaves]
    grad = _grad_fn(dtype, sign)
    for k in range(1, STEPS + 1):
        grads = optree.tree_leaves(grad(optree.tree_unflatten(spec, leaves)))
        leaves = [p + step_fn(k, p, g, s) for p, g, s in zip(leaves, grads, slots, strict=True)]
    return optree.tree_unflatten(spec, leaves)


def _adam_eps_root_step(lr, b1, b2, eps, eps_root, weight_decay):
    def step(t, p, g, s):
        g = g + weight_decay * p
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        m_hat, v_hat = s["m"] / (1 - b1**t), s["v"] / (1 - b2**t)
        return -lr * m_hat / (torch.sqrt(v_hat + eps_root) + eps)

    return step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_adam_eps_root_matches_closed_form(dtype):
    # eps_root inside the square root, comparable to g^2 so that it matters.
    kwargs = dict(lr=0.02, b1=0.9, b2=0.99, eps=1e-10, eps_root=1e-2, weight_decay=0.01)
    tx = optcompile.adam(
        0.02, betas=(0.9, 0.99), eps=1e-10, eps_root=1e-2, weight_decay=0.01, backend=B
    )
    expected = _closed_form(_adam_eps_root_step(**kwargs))
    expected = optree.tree_map(lambda t: t.to(dtype), expected)
    _assert_trees_close(_run_optcompile(tx, dtype), expected, dtype)
    without = _closed_form(_adam_eps_root_step(**{**kwargs, "eps_root": 0.0}))
    assert (optree.tree_leaves(without)[0] - optree.tree_leaves(expected)[0]).abs().max() > 1e-3


def _rmsprop_nesterov_step(lr, alpha, eps, momentum, weight_decay, initial_scale, sign):
    """TorchOpt: flip/decay -> scale_by_rms -> trace(momentum, nesterov=True) -> -lr."""

    def step(t, p, g, s):
        g = sign * g + weight_decay * p
        s["nu"] = alpha * s.get("nu", initial_scale) + (1 - alpha) * g * g
        scaled = g / (torch.sqrt(s["nu"]) + eps)
        s["buf"] = scaled if t == 1 else momentum * s["buf"] + scaled
        return -lr * (scaled + momentum * s["buf"])

    return step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_rmsprop_nesterov_matches_closed_form(dtype, maximize):
    """torch.optim.RMSprop has no nesterov: check TorchOpt's trace(nesterov=True) on rms."""
    sign = -1.0 if maximize else 1.0
    tx = optcompile.rmsprop(
        0.01,
        alpha=0.95,
        eps=1e-6,
        weight_decay=0.02,
        momentum=0.8,
        initial_scale=0.5,
        nesterov=True,
        maximize=maximize,
        backend=B,
    )
    step = _rmsprop_nesterov_step(0.01, 0.95, 1e-6, 0.8, 0.02, 0.5, sign)
    expected = optree.tree_map(lambda t: t.to(dtype), _closed_form(step, sign=sign))
    _assert_trees_close(_run_optcompile(tx, dtype, sign), expected, dtype)


# Learning rates as 0-d tensors and as schedules.


@pytest.mark.parametrize(
    "make_tx, make_torch",
    [
        pytest.param(
            lambda lr: optcompile.sgd(lr, momentum=0.9, weight_decay=0.01, backend=B),
            lambda ps, lr: optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=0.01),
            id="sgd",
        ),
        pytest.param(
            lambda lr: optcompile.adam(lr, backend=B),
            lambda ps, lr: optim.Adam(ps, lr=lr),
            id="adam",
        ),
        pytest.param(
            lambda lr: optcompile.adamw(lr, weight_decay=0.1, backend=B),
            lambda ps, lr: optim.AdamW(ps, lr=lr, weight_decay=0.1),
            id="adamw",
        ),
        pytest.param(
            lambda lr: optcompile.rmsprop(lr, centered=True, backend=B),
            lambda ps, lr: optim.RMSprop(ps, lr=lr, centered=True),
            id="rmsprop",
        ),
    ],
)
def test_tensor_lr_matches_float_lr(make_tx, make_torch):
    lr = torch.tensor(0.02, dtype=torch.float64)
    actual = _run_optcompile(make_tx(lr), torch.float64)
    expected = _run_torch(lambda ps: make_torch(ps, 0.02), torch.float64)
    _assert_trees_close(actual, expected, torch.float64)


def _unrolled_loss(make_tx, lr, steps=5):
    """sum(p^2) after ``steps`` differentiable steps whose gradients depend on the params."""
    params, grad = _params(torch.float64), _grad_fn(torch.float64)
    tx = make_tx(lr)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params=params, inplace=False)
        params = optcompile.apply_updates(params, updates, inplace=False)
    return sum((p**2).sum() for p in optree.tree_leaves(params))


@pytest.mark.parametrize(
    "make_tx",
    [
        pytest.param(lambda lr: optcompile.sgd(lr, 0.9, nesterov=True, backend=B), id="sgd"),
        pytest.param(lambda lr: optcompile.adam(lr, weight_decay=0.1, backend=B), id="adam"),
        pytest.param(lambda lr: optcompile.adamw(lr, mask=_MASK, backend=B), id="adamw-mask"),
        pytest.param(lambda lr: optcompile.rmsprop(lr, centered=True, backend=B), id="rmsprop"),
    ],
)
def test_lr_hypergradient_matches_finite_differences(make_tx, lr0=0.02, h=1e-6):
    lr = torch.tensor(lr0, dtype=torch.float64, requires_grad=True)
    (hypergradient,) = torch.autograd.grad(_unrolled_loss(make_tx, lr), lr)
    with torch.no_grad():
        plus = _unrolled_loss(make_tx, torch.tensor(lr0 + h, dtype=torch.float64))
        minus = _unrolled_loss(make_tx, torch.tensor(lr0 - h, dtype=torch.float64))
    assert hypergradient.item() == pytest.approx(((plus - minus) / (2 * h)).item(), rel=1e-6)


def test_moment_requires_grad_creates_differentiable_buffers():
    params = _params(torch.float64)
    adam_state, _ = optcompile.adam(moment_requires_grad=True, backend=B).init(params)
    assert all(t.requires_grad and t.is_leaf for t in adam_state.mu + adam_state.nu)
    assert not any(c.requires_grad for c in adam_state.count)
    plain, _ = optcompile.adam(backend=B).init(params)
    assert not any(t.requires_grad for t in plain.mu + plain.nu)


def _lr_sequence(schedule):
    # Evaluated as the optimizer does: at the 0-based step count, an int64 0-d tensor.
    return [float(schedule(torch.tensor(k, dtype=torch.int64))) for k in range(STEPS)]


@pytest.mark.parametrize(
    "make_tx, make_torch, schedule",
    [
        pytest.param(
            lambda lr: optcompile.sgd(lr, momentum=0.9, nesterov=True, backend=B),
            lambda ps: optim.SGD(ps, lr=0.0, momentum=0.9, nesterov=True),
            linear_schedule(0.05, 0.005, transition_steps=30),
            id="sgd-linear",
        ),
        pytest.param(
            lambda lr: optcompile.adam(lr, weight_decay=0.01, backend=B),
            lambda ps: optim.Adam(ps, lr=0.0, weight_decay=0.01),
            linear_schedule(0.001, 0.03, transition_steps=20, transition_begin=5),
            id="adam-linear-warmup",
        ),
        pytest.param(
            lambda lr: optcompile.adagrad(lr, lr_decay=0.05, backend=B),
            lambda ps: optim.Adagrad(ps, lr=0.0, lr_decay=0.05),
            exponential_decay(0.2, 0.5, transition_steps=10),
            id="adagrad-lr_decay-exponential",
        ),
        pytest.param(
            lambda lr: optcompile.rmsprop(lr, momentum=0.5, backend=B),
            lambda ps: optim.RMSprop(ps, lr=0.0, momentum=0.5),
            exponential_decay(0.02, 0.3, transition_steps=7, staircase=True),
            id="rmsprop-staircase",
        ),
    ],
)
def test_schedule_lr_matches_torch_driven_by_the_same_sequence(make_tx, make_torch, schedule):
    lrs = _lr_sequence(schedule)
    assert lrs[0] != lrs[-1]
    actual = _run_optcompile(make_tx(schedule), torch.float64)
    expected = _run_torch(make_torch, torch.float64, lrs=lrs)
    _assert_trees_close(actual, expected, torch.float64)


def test_schedule_is_called_with_the_zero_based_count_before_each_step():
    seen: list[int] = []

    def schedule(count):
        seen.append(int(count))
        return 0.1

    tx = optcompile.sgd(schedule, momentum=0.9, backend=B)
    params = (torch.zeros(3, dtype=torch.float64),)
    state = tx.init(params)
    for _ in range(4):
        _, state = tx.update((torch.ones(3, dtype=torch.float64),), state)
    assert seen == [0, 1, 2, 3]


# Unused parameters: a None gradient skips the parameter, as torch.optim skips p.grad is None.


def _some_grads_none(k, grads):
    """Leaf 1 (the bias) has no gradient before step 3, leaf 2 (the 0-d scale) on odd steps."""
    leaves, spec = optree.tree_flatten(grads)
    if k < 3:
        leaves[1] = None
    if k % 2:
        leaves[2] = None
    return optree.tree_unflatten(spec, leaves)


@pytest.mark.parametrize(
    "make_tx, make_torch",
    [
        pytest.param(
            lambda: optcompile.adam(0.02, backend=B), lambda ps: optim.Adam(ps, lr=0.02), id="adam"
        ),
        pytest.param(
            lambda: optcompile.sgd(0.05, momentum=0.9, dampening=0.5, backend=B),
            lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.5),
            id="sgd-dampening",
        ),
        pytest.param(
            lambda: optcompile.rmsprop(0.01, momentum=0.5, backend=B),
            lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.5),
            id="rmsprop",
        ),
    ],
)
def test_none_gradients_skip_their_parameter_like_torch_optim(make_tx, make_torch):
    actual = _run_optcompile(make_tx(), torch.float64, grads_hook=_some_grads_none)
    expected = _run_torch(make_torch, torch.float64, grads_hook=_some_grads_none)
    _assert_trees_close(actual, expected, torch.float64)


def test_inplace_and_functional_updates_agree():
    tx = optcompile.adamw(0.02, weight_decay=0.1, backend=B)
    inplace = _run_optcompile(tx, torch.float64, inplace=True)
    functional = _run_optcompile(tx, torch.float64, inplace=False)
    for a, b in zip(optree.tree_leaves(inplace), optree.tree_leaves(functional), strict=True):
        assert torch.equal(a, b)


# State layout (TorchOpt's, which the seed tutorial prints).


def test_sgd_state_is_a_tuple_of_one_empty_state():
    params = (torch.zeros(2),)
    assert optcompile.sgd(lr=1.0, backend=B).init(params) == (optcompile.EmptyState(),)
    assert repr(optcompile.sgd(lr=1.0).init(params)) == "(EmptyState(),)"


def test_adam_state_repr():
    state = optcompile.adam(backend=B).init([torch.zeros(2)])
    assert repr(state).startswith("(ScaleByAdamState(mu=[tensor([0., 0.])], nu=[tensor([0., 0.])]")
    assert repr(state).endswith("count=[tensor(0)]), EmptyState())")
    assert state[0]._fields == ("mu", "nu", "count")


def test_schedule_lr_state_is_torchopt_scale_by_schedule_state():
    state = optcompile.adam(linear_schedule(0.1, 0.01, 10), backend=B).init([torch.zeros(2)])
    assert repr(state[1]) == "ScaleByScheduleState(count=[tensor(0)])"  # one count per leaf
