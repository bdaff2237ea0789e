"""The transform namespace, clip_grad_norm and apply_updates against torch and closed forms."""

from __future__ import annotations

import math

import optree
import pytest
import torch

import optcompile
from optcompile import transform as T
from optcompile.base import EmptyState
from optcompile.clip import clip_grad_norm
from optcompile.schedule import linear_schedule

B = "eager"  # the oracle backend
F64 = torch.float64


def _tree(seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return scale * torch.randn(*shape, generator=gen, dtype=F64)

    return {"w": r(4, 3), "b": (r(3), r(())), "t": r(2, 2, 2)}


def _clone(tree):
    return optree.tree_map(torch.clone, tree, none_is_leaf=False)


# clip_grad_norm against torch.nn.utils.clip_grad_norm_.


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf], ids=["l2", "l1", "inf"])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "inactive"])
@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "functional"])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, inplace):
    grads = _tree(0, scale=3.0)
    tx = clip_grad_norm(max_norm, norm_type=norm_type, backend=B)
    updates, state = tx.update(_clone(grads), tx.init(grads), inplace=inplace)
    leaves = [torch.zeros_like(g) for g in optree.tree_leaves(grads)]
    for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(leaves, max_norm, norm_type=norm_type)
    assert state == EmptyState()
    for u, p in zip(optree.tree_leaves(updates), leaves, strict=True):
        torch.testing.assert_close(u, p.grad, rtol=1e-14, atol=0)


def test_clip_grad_norm_of_float32_matches_torch():
    grads = optree.tree_map(lambda t: t.float(), _tree(0, scale=3.0))
    updates, _ = clip_grad_norm(0.5, backend=B).update(_clone(grads), EmptyState())
    leaves = [torch.zeros_like(g) for g in optree.tree_leaves(grads)]
    for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(leaves, 0.5)
    for u, p in zip(optree.tree_leaves(updates), leaves, strict=True):
        assert u.dtype == torch.float32
        torch.testing.assert_close(u, p.grad)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_grad_norm_error_if_nonfinite(bad):
    grads = _tree(0)
    grads["b"][0][1] = bad
    tx = clip_grad_norm(1.0, error_if_nonfinite=True, backend=B)
    with pytest.raises(RuntimeError, match=r"non-finite"):
        tx.update(_clone(grads), EmptyState())
    # Without the flag it scales by the non-finite norm anyway, as torch does.
    updates, _ = clip_grad_norm(1.0, backend=B).update(_clone(grads), EmptyState())
    leaves = [torch.zeros_like(g) for g in optree.tree_leaves(grads)]
    for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(leaves, 1.0)
    for u, p in zip(optree.tree_leaves(updates), leaves, strict=True):
        torch.testing.assert_close(u, p.grad, equal_nan=True)


def test_clip_grad_norm_ignores_none_leaves_like_torch():
    grads = _tree(0, scale=3.0)
    grads["t"] = None
    updates, _ = clip_grad_norm(0.5, backend=B).update(_clone(grads), EmptyState())
    assert updates["t"] is None
    leaves = [torch.zeros_like(p) for p in optree.tree_leaves(_tree(0))]
    for p, g in zip(leaves, optree.tree_leaves(grads, none_is_leaf=True), strict=True):
        p.grad = None if g is None else g.clone()
    torch.nn.utils.clip_grad_norm_(leaves, 0.5)  # skips parameters without a gradient
    for u, p in zip(
        optree.tree_leaves(updates), [q for q in leaves if q.grad is not None], strict=True
    ):
        torch.testing.assert_close(u, p.grad, rtol=1e-14, atol=0)


def test_clip_grad_norm_coefficient_is_a_constant_to_autograd():
    g = torch.tensor([3.0, 4.0], dtype=F64, requires_grad=True)
    (u,), _ = clip_grad_norm(1.0, backend=B).update((g,), EmptyState(), inplace=False)
    (du,) = torch.autograd.grad(u.sum(), g)
    torch.testing.assert_close(du, torch.full_like(g, 1.0 / (5.0 + 1e-6)))


# masked and add_decayed_weights(mask=...).

MASK = {"w": True, "b": (False, True), "t": False}


@pytest.mark.parametrize("mask", [MASK, lambda params: MASK], ids=["tree", "callable"])
def test_masked_applies_inner_on_selected_leaves_only(mask):
    params, grads_seq = _tree(0), [_tree(k + 1) for k in range(3)]
    tx = T.masked(T.scale_by_adam(b1=0.5, backend=B), mask)
    state = tx.init(params)
    ref = T.scale_by_adam(b1=0.5, backend=B)
    keep = optree.tree_leaves(MASK)
    selected = [p for p, m in zip(optree.tree_leaves(params), keep, strict=True) if m]
    ref_state = ref.init(selected)
    for grads in grads_seq:
        updates, state = tx.update(_clone(grads), state, params=params)
        leaves = optree.tree_leaves(grads)
        expected, ref_state = ref.update(
            [g.clone() for g, m in zip(leaves, keep, strict=True) if m], ref_state
        )
        expected = iter(expected)
        for u, g, m in zip(optree.tree_leaves(updates), leaves, keep, strict=True):
            torch.testing.assert_close(u, next(expected) if m else g, rtol=1e-14, atol=0)
    assert isinstance(state, T.MaskedState)


@pytest.mark.parametrize("mask", [None, MASK, lambda params: MASK], ids=["all", "tree", "fn"])
@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "functional"])
def test_add_decayed_weights_closed_form(mask, inplace):
    params, grads = _tree(0), _tree(1)
    tx = T.add_decayed_weights(0.3, mask, backend=B)
    updates, _ = tx.update(_clone(grads), tx.init(params), params=params, inplace=inplace)
    keep = optree.tree_leaves(MASK) if mask is not None else [True] * 4
    for u, g, p, m in zip(
        optree.tree_leaves(updates),
        optree.tree_leaves(grads),
        optree.tree_leaves(params),
        keep,
        strict=True,
    ):
        torch.testing.assert_close(u, g + 0.3 * p if m else g, rtol=1e-15, atol=0)


# nan_to_num, scale_by_schedule, scale and trace.


def test_nan_to_num_inplace_returns_the_same_tensor():
    x = torch.tensor([math.nan, 1.0, math.inf, -math.inf])
    tx = T.nan_to_num(nan=-1.0, posinf=9.0, neginf=-9.0)
    (u,), state = tx.update((x,), tx.init((x,)), inplace=True)
    assert u is x and state == EmptyState()
    assert x.tolist() == [-1.0, 1.0, 9.0, -9.0]


def test_nan_to_num_functional_leaves_the_input_alone():
    x = torch.tensor([math.nan, 1.0, math.inf], requires_grad=False)
    tx = T.nan_to_num()
    (u,), _ = tx.update((x,), tx.init((x,)), inplace=False)
    assert u is not x and math.isnan(x[0])
    torch.testing.assert_close(u, torch.nan_to_num(x))


def test_scale_by_schedule_closed_form():
    schedule = linear_schedule(1.0, 0.2, transition_steps=4)
    tx = T.scale_by_schedule(schedule, backend=B)
    params = _tree(0)
    state = tx.init(params)
    assert type(state).__name__ == "ScaleByScheduleState" and state._fields == ("count",)
    for k in range(6):
        grads = _tree(k + 1)
        updates, state = tx.update(_clone(grads), state)
        factor = float(schedule(torch.tensor(k)))
        for u, g in zip(optree.tree_leaves(updates), optree.tree_leaves(grads), strict=True):
            torch.testing.assert_close(u, factor * g, rtol=1e-15, atol=0)
        assert [int(c) for c in state.count] == [k + 1] * len(state.count)


def test_scale_with_a_tensor_factor_has_a_hypergradient():
    alpha = torch.tensor(0.5, dtype=F64, requires_grad=True)
    g = _tree(1)
    tx = T.scale(alpha, backend=B)
    updates, state = tx.update(g, tx.init(g), inplace=False)
    assert state == EmptyState()
    total = sum(u.sum() for u in optree.tree_leaves(updates))
    (d_alpha,) = torch.autograd.grad(total, alpha)
    torch.testing.assert_close(d_alpha, sum(t.sum() for t in optree.tree_leaves(g)))


@pytest.mark.parametrize(
    "momentum, dampening, nesterov", [(0.9, 0.0, False), (0.8, 0.4, False), (0.9, 0.0, True)]
)
def test_trace_matches_torch_sgd(momentum, dampening, nesterov):
    """SGD(lr=1) moves the parameter by minus what trace returns (its buffer, or Nesterov's)."""
    tx = T.trace(momentum, dampening, nesterov, backend=B)
    params = _tree(0)
    state = tx.init(params)
    leaves = [p.clone() for p in optree.tree_leaves(params)]
    opt = torch.optim.SGD(leaves, lr=1.0, momentum=momentum, dampening=dampening, nesterov=nesterov)
    for k in range(5):
        grads = _tree(k + 1)
        before = [p.clone() for p in leaves]
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        opt.step()
        updates, state = tx.update(_clone(grads), state)
        for u, p, p0 in zip(optree.tree_leaves(updates), leaves, before, strict=True):
            torch.testing.assert_close(u, p0 - p, rtol=1e-13, atol=1e-15)
        for t, p in zip(state.trace, leaves, strict=True):
            torch.testing.assert_close(t, opt.state[p]["momentum_buffer"], rtol=1e-13, atol=0)


# None leaves in the updates pass through every transform untouched.

# (transformation, number of per-leaf state lists in its state: buffers and step counts)
TRANSFORMS = [
    pytest.param(lambda: T.scale(0.5, backend=B), 0, id="scale"),
    pytest.param(lambda: T.scale_by_schedule(lambda c: 0.5, backend=B), 1, id="scale_by_schedule"),
    pytest.param(lambda: T.trace(0.9, backend=B), 2, id="trace"),
    pytest.param(lambda: T.scale_by_adam(backend=B), 3, id="scale_by_adam"),
    pytest.param(lambda: T.scale_by_rss(backend=B), 2, id="scale_by_rss"),
    pytest.param(lambda: T.add_decayed_weights(0.1, backend=B), 0, id="add_decayed_weights"),
    pytest.param(lambda: T.add_decayed_weights(0.1, MASK, backend=B), 0, id="masked-decay"),
    pytest.param(lambda: T.nan_to_num(), 0, id="nan_to_num"),
    pytest.param(lambda: clip_grad_norm(0.1, backend=B), 0, id="clip_grad_norm"),
    pytest.param(lambda: optcompile.adamw(0.1, backend=B), 3, id="adamw"),
    pytest.param(
        lambda: optcompile.chain(
            clip_grad_norm(1.0, backend=B), optcompile.rmsprop(0.1, momentum=0.9, backend=B)
        ),
        3,
        id="clip-rmsprop",
    ),
]


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "functional"])
@pytest.mark.parametrize("make_tx, n_columns", TRANSFORMS)
def test_none_leaves_pass_through_untouched(make_tx, n_columns, inplace):
    tx = make_tx()
    params = _tree(0)
    state = tx.init(params)
    grads = _tree(1)
    grads["b"] = (None, grads["b"][1])
    grads["t"] = None
    before = _clone(state)
    updates, new_state = tx.update(_clone(grads), state, params=params, inplace=inplace)
    assert updates["t"] is None and updates["b"][0] is None
    assert updates["w"] is not None and updates["b"][1] is not None
    # Leaves in optree order: b[0], b[1], t, w. The state slots of the unused ones keep their
    # values, the used ones move.
    columns = list(zip(_columns(before), _columns(new_state), strict=True))
    assert len(columns) == n_columns
    for old, new in columns:
        for i in (0, 2):
            assert torch.equal(old[i], new[i])
        for i in (1, 3):
            assert not torch.equal(old[i], new[i])


def _columns(state):
    """The per-leaf buffer lists (mu, nu, trace, ...) anywhere in a state."""
    if isinstance(state, list) and len(state) == 4:
        yield state
    elif isinstance(state, tuple):
        for member in state:
            yield from _columns(member)


# apply_updates.


def test_apply_updates_inplace_writes_into_the_params():
    params = _tree(0)
    originals = optree.tree_leaves(params)
    values = [p.clone() for p in originals]
    updates = _tree(1)
    updates["t"] = None
    out = optcompile.apply_updates(params, updates)
    out_leaves = optree.tree_leaves(out)
    assert all(a is b for a, b in zip(out_leaves, originals, strict=True))
    for p, v, u in zip(
        out_leaves, values, optree.tree_leaves(updates, none_is_leaf=True), strict=True
    ):
        torch.testing.assert_close(p, v if u is None else v + u, rtol=0, atol=0)


def test_apply_updates_inplace_leaves_no_autograd_history():
    p = torch.ones(3, requires_grad=True)
    u = torch.full((3,), 0.5, requires_grad=True) * 2
    (q,) = optcompile.apply_updates((p,), (u,))
    assert q is p and p.grad_fn is None and p.is_leaf
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0))


def test_apply_updates_functional_is_differentiable_and_leaves_params_alone():
    p = torch.ones(3, dtype=F64, requires_grad=True)
    u = torch.full((3,), 0.5, dtype=F64, requires_grad=True)
    out = optcompile.apply_updates({"p": p, "frozen": p}, {"p": u, "frozen": None}, inplace=False)
    assert out["p"] is not p and out["frozen"] is p
    assert torch.equal(p.detach(), torch.ones(3, dtype=F64))
    dp, du = torch.autograd.grad((out["p"] * 3).sum(), (p, u))
    torch.testing.assert_close(dp, torch.full_like(p, 3.0))
    torch.testing.assert_close(du, torch.full_like(u, 3.0))
