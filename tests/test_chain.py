"""chain: a fused chain equals its members applied one by one, forward and meta-gradient."""

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

B = "eager"  # the oracle backend; compiled backends are compared with it elsewhere
F64 = torch.float64


def _params(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    tree = {
        "w": torch.randn(4, 3, generator=gen, dtype=F64),
        "b": (torch.randn(3, generator=gen, dtype=F64), torch.randn((), generator=gen, dtype=F64)),
    }
    return optree.tree_map(lambda t: t.requires_grad_(requires_grad), tree)


def _grads(steps, requires_grad=False):
    gen = torch.Generator().manual_seed(1)
    like = _params()
    return [
        optree.tree_map(
            lambda p: torch.randn(p.shape, generator=gen, dtype=F64).requires_grad_(requires_grad),
            like,
        )
        for _ in range(steps)
    ]


def _adam_decay_scale(lr):
    return [
        T.scale_by_adam(b1=0.8, b2=0.95, eps=1e-3, backend=B),
        T.add_decayed_weights(0.1, backend=B),
        T.scale(-lr, backend=B),
    ]


def _decay_stddev_nesterov_schedule(lr):
    return [
        optcompile.assemble.flip_and_decay(0.05, True, B),
        T.scale_by_stddev(alpha=0.9, eps=1e-3, initial_scale=0.5, backend=B),
        T.trace(0.9, nesterov=True, backend=B),
        T.scale_by_schedule(linear_schedule(1.0, 0.1, transition_steps=3), backend=B),
        T.scale(-lr, backend=B),
    ]


def _clip_rms_nan_trace_clip(lr):
    # Non-rule members (nan_to_num, a clip statistic) split the chain into several units.
    return [
        clip_grad_norm(1.0, backend=B),
        T.scale_by_rms(alpha=0.9, eps=1e-3, backend=B),
        T.nan_to_num(),
        T.trace(0.5, dampening=0.2, backend=B),
        clip_grad_norm(0.3, norm_type=math.inf, backend=B),
        T.scale(-lr, backend=B),
    ]


CHAINS = [
    pytest.param(_adam_decay_scale, 1, id="adam-decay-scale"),
    pytest.param(_decay_stddev_nesterov_schedule, 1, id="decay-stddev-nesterov-schedule"),
    pytest.param(_clip_rms_nan_trace_clip, 4, id="clip-rms-nan_to_num-trace-clip"),
]


def _run_fused(pieces, params, grads_seq, inplace):
    tx = optcompile.chain(*pieces)
    state = tx.init(params)
    history = []
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params=params, inplace=inplace)
        history.append((updates, state))
        params = optcompile.apply_updates(params, updates, inplace=inplace)
    return params, history


def _run_separately(pieces, params, grads_seq, inplace):
    states = [piece.init(params) for piece in pieces]
    history = []
    for grads in grads_seq:
        updates = grads
        for j, piece in enumerate(pieces):
            updates, states[j] = piece.update(updates, states[j], params=params, inplace=inplace)
        history.append((updates, tuple(states)))
        params = optcompile.apply_updates(params, updates, inplace=inplace)
    return params, history


def _assert_trees_close(actual, expected):
    a_leaves, a_spec = optree.tree_flatten(actual, none_is_leaf=True)
    e_leaves, e_spec = optree.tree_flatten(expected, none_is_leaf=True)
    assert a_spec == e_spec
    for a, e in zip(a_leaves, e_leaves, strict=True):
        if isinstance(e, torch.Tensor) and e.is_floating_point():
            torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-15)
        else:
            assert type(a) is type(e) and (
                a == e if not isinstance(e, torch.Tensor) else torch.equal(a, e)
            )


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "functional"])
@pytest.mark.parametrize("make_pieces, n_units", CHAINS)
def test_fused_chain_equals_members_one_after_another(make_pieces, n_units, inplace):
    lr = torch.tensor(0.1, dtype=F64)
    grads = _grads(4)
    fused = _run_fused(
        make_pieces(lr), _params(), [optree.tree_map(torch.clone, g) for g in grads], inplace
    )
    separate = _run_separately(make_pieces(lr), _params(), grads, inplace)
    for (u_f, s_f), (u_s, s_s) in zip(fused[1], separate[1], strict=True):
        _assert_trees_close(u_f, u_s)
        assert [type(s) for s in s_f] == [type(s) for s in s_s]
        _assert_trees_close(s_f, s_s)
    _assert_trees_close(fused[0], separate[0])
    assert len(optcompile.chain(*make_pieces(lr)).units) == n_units


def _meta_gradients(run, steps=3):
    """d(loss)/d(params0, every step's grads, lr) of a loss of the final params and updates.

    ``run(lr, params, grads_seq) -> (final params, [(updates, state) per step])``.
    """
    lr = torch.tensor(0.1, dtype=F64, requires_grad=True)
    params, grads = _params(requires_grad=True), _grads(steps, requires_grad=True)
    final, history = run(lr, params, grads)
    w = torch.linspace(-1, 1, 12, dtype=F64).reshape(4, 3)
    loss = (w * final["w"]).sum() + sum((p**2).sum() for p in optree.tree_leaves(final["b"]))
    loss = loss + sum((u**2).sum() for u in optree.tree_leaves(history[-1][0]))
    inputs = [*optree.tree_leaves(params), *optree.tree_leaves(grads), lr]
    return torch.autograd.grad(loss, inputs)


def _functional(runner, make_pieces):
    return lambda lr, params, grads: runner(make_pieces(lr), params, grads, inplace=False)


@pytest.mark.parametrize("make_pieces, n_units", CHAINS)
def test_fused_chain_meta_gradient_equals_members_one_after_another(make_pieces, n_units):
    fused = _meta_gradients(_functional(_run_fused, make_pieces))
    separate = _meta_gradients(_functional(_run_separately, make_pieces))
    for a, e in zip(fused, separate, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
    assert fused[-1].abs() > 0 and all(g.abs().sum() > 0 for g in fused)


def _adam_decay_scale_by_hand(lr, params, grads_seq):
    """Plain torch autograd reference for chain(scale_by_adam, add_decayed_weights, scale)."""
    b1, b2, eps, wd = 0.8, 0.95, 1e-3, 0.1
    mu = optree.tree_map(torch.zeros_like, params)
    nu = optree.tree_map(torch.zeros_like, params)
    history = []
    for t, grads in enumerate(grads_seq, start=1):
        mu = optree.tree_map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
        nu = optree.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        updates = optree.tree_map(
            lambda m, v, p, bc1=bc1, bc2=bc2: (
                -lr * ((m / bc1) / (torch.sqrt(v / bc2) + eps) + wd * p)
            ),
            mu,
            nu,
            params,
        )
        history.append((updates, None))
        params = optree.tree_map(torch.add, params, updates)
    return params, history


def test_fused_adam_chain_meta_gradient_equals_torch_autograd():
    fused = _meta_gradients(_functional(_run_fused, _adam_decay_scale))
    by_hand = _meta_gradients(_adam_decay_scale_by_hand)
    for a, e in zip(fused, by_hand, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


def test_chain_identities():
    tx = T.scale(2.0, backend=B)
    assert optcompile.chain() is optcompile.identity()
    assert optcompile.chain(tx) is tx
    assert optcompile.chain(optcompile.identity(), tx, optcompile.identity()) is tx
    a, b = T.trace(0.9, backend=B), T.scale(0.5, backend=B)
    nested = optcompile.chain(optcompile.chain(tx, a), b)
    assert nested == optcompile.chain(tx, a, b)
    assert nested.init((torch.zeros(1),))[0] == EmptyState()


# explain(): what runs as one kernel.


def test_explain_adamw_is_one_fused_kernel():
    text = optcompile.explain(optcompile.adamw(1e-3, weight_decay=0.1))
    lines = text.splitlines()
    assert lines[0] == "1 unit(s) per step:"
    assert lines[1] == (
        "[0] one fused kernel of 3 rule(s): scale_by_adam -> add_decayed_weights -> scale_by_neg_lr"
    )
    assert "rule scale_by_adam+add_decayed_weights+scale_by_neg_lr" in text


@pytest.mark.parametrize("backend", [None, B])
def test_explain_clip_then_sgd_is_one_fused_unit(backend):
    tx = optcompile.chain(
        clip_grad_norm(max_norm=2.0, backend=backend), optcompile.sgd(lr=1.0, backend=backend)
    )
    lines = optcompile.explain(tx).splitlines()
    assert lines[:2] == [
        "1 unit(s) per step:",
        "[0] one fused kernel of 2 rule(s): scale -> scale_by_neg_lr",
    ]


def test_clip_then_sgd_state_is_torchopt_tuple():
    # TorchOpt 0.7.3 (chain-flat on, its default) prints `(EmptyState(), (EmptyState(),))`:
    # `sgd` is one member of the outer chain, so its state nests; fusion must not change that.
    tx = optcompile.chain(clip_grad_norm(max_norm=2.0), optcompile.sgd(lr=1.0))
    assert repr(tx.init((torch.zeros(2),))) == "(EmptyState(), (EmptyState(),))"


def test_clip_then_sgd_meta_gradient_seed_closed_form():
    """The seed's section 3: a1 = a0 - lr * clip(x^2); x.grad = -4 lr x^3 / scale + 2 a0 x."""
    a = torch.tensor(1.0, requires_grad=True)
    x = torch.tensor(2.0, requires_grad=True)
    tx = optcompile.chain(
        clip_grad_norm(max_norm=2.0, backend=B),
        optcompile.sgd(lr=1.0, moment_requires_grad=True, backend=B),
    )
    (g,) = torch.autograd.grad(a * x**2, a, create_graph=True)
    (u,), _ = tx.update((g,), tx.init((a,)), inplace=False)
    (a1,) = optcompile.apply_updates((a,), (u,), inplace=False)
    (a1 * x**2).backward()
    assert x.grad.item() == pytest.approx(-12.0, abs=1e-5)  # the 1e-6 in the clip denominator


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_then_sgd_momentum_matches_torch(norm_type):
    tx = optcompile.chain(
        clip_grad_norm(0.5, norm_type=norm_type, backend=B),
        optcompile.sgd(0.1, momentum=0.9, weight_decay=0.01, backend=B),
    )
    params = _params()
    state = tx.init(params)
    leaves = [p.clone() for p in optree.tree_leaves(params)]
    torch_opt = torch.optim.SGD(leaves, lr=0.1, momentum=0.9, weight_decay=0.01)
    for grads in _grads(5):
        for p, g in zip(leaves, optree.tree_leaves(grads), strict=True):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(leaves, 0.5, norm_type=norm_type)
        torch_opt.step()
        updates, state = tx.update(grads, state, params=params)
        params = optcompile.apply_updates(params, updates)
    for a, e in zip(optree.tree_leaves(params), leaves, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


# ------------------------------------------------- applying the update inside the last kernel


@pytest.mark.parametrize(
    "make_tx",
    [
        pytest.param(lambda: optcompile.adam(0.1, weight_decay=0.01, backend="eager"), id="adam"),
        pytest.param(lambda: optcompile.transform.scale(-0.5, backend="eager"), id="one-rule"),
        pytest.param(
            lambda: optcompile.chain(
                optcompile.sgd(0.1, momentum=0.9, backend="eager"),
                optcompile.transform.nan_to_num(),
            ),
            id="last-unit-not-a-rule",
        ),  # fmt: skip
    ],
)
def test_apply_transform_equals_update_then_apply_updates(make_tx):
    """Forward, state and meta-gradients of the fused p + u equal update() + apply_updates()."""
    torch.manual_seed(0)
    base = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    results = []
    for fused in (True, False):
        tx = make_tx()
        params = [p.clone().requires_grad_() for p in base]
        state = tx.init(params)
        grads = [(p**3).sum() * p for p in params]  # depend on params: a second-order path
        grads[1] = None  # an unused parameter keeps its value
        for _ in range(2):
            if fused:
                new, state = optcompile.apply_transform(tx, grads, state, params, inplace=False)
            else:
                updates, state = tx.update(grads, state, params=params, inplace=False)
                new = optcompile.apply_updates(params, updates, inplace=False)
            grads = [(q**3).sum() * q for q in new]
            grads[1] = None
        loss = sum((q**2).sum() for q in new)
        meta = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((new, meta))
    (new_a, meta_a), (new_b, meta_b) = results
    for a, b in zip(new_a + list(meta_a), new_b + list(meta_b), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert new_a[1] is not None and torch.equal(new_a[1].detach(), base[1])


def test_aliases_and_chains_pickle_and_keep_working():
    import pickle

    tx = optcompile.chain(optcompile.clip.clip_grad_norm(1.0), optcompile.adam(0.1))
    copy = pickle.loads(pickle.dumps(tx))
    params = [torch.ones(3, dtype=torch.float64)]
    grads = [torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)]
    expected, _ = tx.update(grads, tx.init(params), params=params)
    got, _ = copy.update(grads, copy.init(params), params=params)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ------------------------------------------------------------------ found in review


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
