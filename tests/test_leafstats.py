"""Per-leaf statistics in the rule runtime (``optcompile.leafstats``): the runtime, not the maths.

The optimizers built on them (LAMB, LARS, NovoGrad) are checked against optax and closed forms
in ``test_optimizer_db.py``, the transforms against optax in ``test_transform_optax.py``. Here:
the statistic's gradient (gradcheck through the norms), the eager flat path with broadcast
inputs, vmap over tasks == a loop (with a parameter whose gradient is exactly zero), a
torch.compile'd meta-step, the native backend refusing cleanly, unit splitting in chains, and
declaration errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

import optcompile as oc
from optcompile import sym
from optcompile import transform as T
from optcompile.errors import RuleError
from optcompile.fused import RuleTransformation
from optcompile.leafstats import UPDATE_NORM, unitwise_norm
from optcompile.lowering import backends
from optcompile.lowering.backends.eager import (
    run_forward,
    run_forward_flat,
    run_vjp,
    run_vjp_flat,
)
from optcompile.lowering.backends.inductor import availability
from optcompile.lowering.kernel import Variant
from optcompile.rules.clipping import adaptive_grad_clip
from optcompile.rules.trust_ratio import scale_by_trust_ratio

TOL = {"rtol": 1e-10, "atol": 1e-12}
SHAPES = [(3, 4), (4,), (), (2, 1, 3)]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())


def _leaves(seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
        for s in SHAPES
    ]


TRANSFORMS = {
    "trust_ratio": lambda: T.scale_by_trust_ratio(0.0, 0.7, 1e-3, backend="eager"),
    "block_rms": lambda: T.clip_by_block_rms(0.5, backend="eager"),
    "agc": lambda: T.adaptive_grad_clip(0.2, backend="eager"),
}


@pytest.mark.parametrize("name", TRANSFORMS)
def test_gradient_through_the_statistics_passes_gradcheck(name):
    """d(update)/d(grads, params) in float64, norms included (the statistic is differentiable)."""
    tx = TRANSFORMS[name]()
    grads, params = _leaves(0, True), _leaves(1, True)

    def step(*inputs):
        g, p = list(inputs[: len(SHAPES)]), list(inputs[len(SHAPES) :])
        updates, _ = tx.update(g, tx.init(p), params=p, inplace=False)
        return tuple(updates)

    assert torch.autograd.gradcheck(step, (*grads, *params))


@pytest.mark.parametrize("name", TRANSFORMS)
def test_forward_mode_through_the_statistics_matches_finite_differences(name):
    tx = TRANSFORMS[name]()
    grads, params = _leaves(10), _leaves(11)
    tangents = _leaves(12)
    state = tx.init(params)

    def step(*g):
        return tuple(tx.update(list(g), state, params=params, inplace=False)[0])

    _, got = jvp(step, tuple(grads), tuple(tangents))
    h = 1e-6
    plus = step(*(g + h * t for g, t in zip(grads, tangents, strict=True)))
    minus = step(*(g - h * t for g, t in zip(grads, tangents, strict=True)))
    for a, p, m in zip(got, plus, minus, strict=True):
        torch.testing.assert_close(a, (p - m) / (2 * h), rtol=1e-6, atol=1e-8)


def test_a_zero_update_and_a_zero_parameter_give_finite_values_and_gradients():
    tx = oc.chain(T.scale_by_trust_ratio(backend="eager"), T.clip_by_block_rms(1.0))
    grads = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    params = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    updates, _ = tx.update([g * 1.0 for g in grads], tx.init(params), params=params, inplace=False)
    (updates[0] * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(updates[0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(grads[0].grad, torch.arange(3.0, dtype=torch.float64))  # ratio 1
    assert torch.isfinite(params[0].grad).all()


def test_eager_flat_path_with_broadcast_statistics_equals_leaf_by_leaf():
    kernel = scale_by_trust_ratio.kernel
    updates, params = _leaves(2), _leaves(3)
    stats = [
        [torch.linalg.vector_norm(p).expand_as(u) for u, p in zip(updates, params, strict=True)],
        [torch.linalg.vector_norm(u).expand_as(u) for u in updates],
    ]
    tensor_lists = [updates, *stats]
    scalars = [torch.tensor(v, dtype=torch.float64) for v in (0.0, 0.5, 1e-3)]
    flat = run_forward_flat(kernel, tensor_lists, scalars)
    per_leaf = run_forward(kernel, tensor_lists, scalars)
    for a, b in zip(flat[0], per_leaf[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    variant = Variant((True,) * 6, (True,))
    cots = [_leaves(4)]
    flat_grads = run_vjp_flat(kernel, variant, cots, tensor_lists, scalars)
    leaf_grads = run_vjp(kernel, variant, cots, tensor_lists, scalars)
    for flat_column, leaf_column in zip(flat_grads[0], leaf_grads[0], strict=True):
        for a, b in zip(flat_column, leaf_column, strict=True):
            torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(flat_grads[1], leaf_grads[1], **TOL)


def test_statistics_enter_the_kernel_as_stride_0_views(monkeypatch):
    from optcompile.lowering.backends import eager

    seen = []

    def spy(kernel, tensor_lists, scalars):
        seen.append([list(column) for column in tensor_lists])
        return run_forward_flat(kernel, tensor_lists, scalars)

    monkeypatch.setattr(eager, "run_forward_flat", spy)

    @oc.rule(stats={"n": UPDATE_NORM})
    def scale_by_norm(g, *, n):
        return g / (n + 1), ()

    updates = _leaves(5)
    tx = scale_by_norm(backend="eager")
    out, _ = tx.update(updates, tx.init(updates), inplace=False)
    (_, stats), *_ = seen
    for o, u, n in zip(out, updates, stats, strict=True):
        assert n.shape == u.shape and all(st == 0 for st in n.stride())
        torch.testing.assert_close(o, u / (torch.linalg.vector_norm(u) + 1), **TOL)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()


def _meta_params(net):
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    params["dead"] = torch.randn(3, dtype=torch.float64)  # its gradient is exactly 0
    return params


def _loss(net, params, x, y):
    weights = {k: v for k, v in params.items() if k != "dead"}
    logits = functional_call(net, weights, (x,))
    return F.cross_entropy(logits, y) + 0.0 * params["dead"].sum()


ALIASES = {
    "lamb": lambda: oc.lamb(0.05, weight_decay=0.01, backend="eager"),
    "lars": lambda: oc.lars(0.5, weight_decay=0.01, trust_coefficient=0.02, backend="eager"),
    "novograd": lambda: oc.novograd(0.05, weight_decay=0.01, backend="eager"),
    "agc+sgd": lambda: oc.chain(
        T.adaptive_grad_clip(0.05, backend="eager"), oc.sgd(0.1, backend="eager")
    ),
}


def _adapt(net, make_tx, params, x, y, steps=2):
    tx = make_tx()
    state = tx.init(params)
    for _ in range(steps):
        grads = grad(lambda p: _loss(net, p, x, y))(params)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        params = oc.apply_updates(params, updates, inplace=False)
    return _loss(net, params, x, y)


@pytest.mark.parametrize("name", ALIASES)
def test_vmap_over_tasks_equals_a_loop(name):
    net = _net()
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, 3, (3, 5), generator=gen)
    meta = {k: v.requires_grad_() for k, v in _meta_params(net).items()}
    batched = vmap(lambda x, y: _adapt(net, ALIASES[name], meta, x, y))(xs, ys).mean()
    got = torch.autograd.grad(batched, list(meta.values()))
    looped = sum(_adapt(net, ALIASES[name], meta, xs[i], ys[i]) for i in range(3)) / 3
    want = torch.autograd.grad(looped, list(meta.values()))
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.compile
def test_compiled_whole_step_meta_gradient_equals_eager():
    """``@optcompile`` on a functional inner step: the statistics are traced into its graph.

    One step of a small model (one graph; 12-18 s here with a warm cache);
    ``tests/test_whole_step.py`` covers multi-step unrolls.
    """
    if (reason := availability(torch.device("cpu"))) is not None:
        pytest.skip(f"Inductor is not available here: {reason}")
    net = torch.nn.Linear(3, 2).double()  # a small graph: compiling dominates this test
    gen = torch.Generator().manual_seed(2)
    x, y = (torch.randn(5, n, generator=gen, dtype=torch.float64) for n in (3, 2))
    tx = oc.lamb(0.05, weight_decay=0.01)

    def loss(params):
        weights = {k: v for k, v in params.items() if k != "dead"}
        return ((functional_call(net, weights, (x,)) - y) ** 2).mean() + 0.0 * params["dead"].sum()

    def inner_step(params, state):
        updates, state = tx.update(grad(loss)(params), state, params=params, inplace=False)
        return oc.apply_updates(params, updates, inplace=False), state

    def meta_gradient(step):
        meta = {k: v.requires_grad_() for k, v in _meta_params(net).items()}
        fast, state = meta, tx.init(meta)
        fast, state = step(fast, state)
        return torch.autograd.grad(loss(fast), list(meta.values()))

    got = meta_gradient(oc.optcompile(inner_step))
    want = meta_gradient(inner_step)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **TOL)


def test_native_backend_refuses_statistics_and_falls_back_with_one_warning():
    tx = T.scale_by_trust_ratio(backend="native")
    g, p = _leaves(6), _leaves(7)
    with pytest.warns(RuntimeWarning, match="native kernels cover Adam only"):
        updates, _ = tx.update(g, tx.init(p), params=p, inplace=False)
    eager = T.scale_by_trust_ratio(backend="eager")
    expected, _ = eager.update(g, eager.init(p), params=p, inplace=False)
    for a, b in zip(updates, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_a_rule_with_statistics_starts_a_fused_unit():
    chained = oc.chain(oc.transform.scale(2.0), T.scale_by_trust_ratio(), oc.transform.scale(3.0))
    assert [len(u.members) for u in chained.units] == [1, 2]
    assert "scale_by_trust_ratio.update_norm = ||u||_2 per parameter tensor" in oc.explain(chained)
    with pytest.raises(ValueError, match="must start a fused unit"):
        RuleTransformation(
            [oc.transform.scale(2.0).members[0], T.scale_by_trust_ratio().members[0]], "eager"
        )


def test_declaration_errors_name_the_statistic():
    with pytest.raises(RuleError, match="stats\\['n'\\] must be an optcompile.leafstats"):

        @oc.rule(stats={"n": lambda u, p: u.norm()})
        def bad_value(g, *, n):
            return g * n, ()

    with pytest.raises(RuleError, match="statistic 'm' must be a keyword-only parameter"):

        @oc.rule(stats={"m": UPDATE_NORM})
        def bad_name(g, *, n):
            return g * n, ()

    _ = sym


def test_unitwise_norm_follows_optax_axes_and_rejects_six_dimensions():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(
        unitwise_norm(x), torch.linalg.vector_norm(x, dim=(0, 1, 2), keepdim=True)
    )
    m = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(unitwise_norm(m), m.norm(dim=0, keepdim=True))
    col = torch.randn(4, 1, dtype=torch.float64)  # squeezes to a vector: one unit
    torch.testing.assert_close(unitwise_norm(col), col.norm().reshape(1, 1))
    tx = adaptive_grad_clip(clipping=0.1, backend="eager")
    six = [torch.ones((1, 2, 1, 2, 1, 2))]
    with pytest.raises(ValueError, match="no unit-wise norm"):
        tx.update(six, tx.init(six), params=six)
