"""optax's transforms and wrappers against optax itself (float64 jax), step by step.

``ema``, ``clip``, ``centralize``, ``apply_if_finite``, ``MultiSteps``, ``multi_transform`` and
``lookahead`` run on the same gradient sequence in optcompile and in optax; ``add_noise`` (whose
random numbers differ by design) is checked by its statistics and reproducibility.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optcompile as oc
from optcompile import transform as T

try:
    import jax
    import optax
except ImportError:  # the optax comparisons skip; the other checks still run
    jax = optax = jnp = None
else:
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

needs_optax = pytest.mark.skipif(optax is None, reason="optax (and jax) not installed")

B = "eager"
SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def _tree(seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: scale * torch.randn(s, generator=gen, dtype=torch.float64) for k, s in SHAPES.items()
    }


def _to_jax(tree):
    return {k: jnp.asarray(v.numpy()) for k, v in tree.items()}


def _close(ours, theirs):
    for k in SHAPES:
        torch.testing.assert_close(
            ours[k], torch.tensor(np.array(theirs[k])), rtol=1e-10, atol=1e-12
        )


def _compare(ours_tx, theirs_tx, steps=8, grads=None, inplace=False):
    """Feed both the same gradients (``grads(k)`` or random) and params; compare the updates."""
    params = _tree(100)
    o_state, t_state = ours_tx.init(params), theirs_tx.init(_to_jax(params))
    theirs_update = jax.jit(theirs_tx.update)
    for k in range(steps):
        g = grads(k) if grads is not None else _tree(k)
        o_upd, o_state = ours_tx.update(
            {n: v.clone() for n, v in g.items()}, o_state, params=params, inplace=inplace
        )
        t_upd, t_state = theirs_update(_to_jax(g), t_state, _to_jax(params))
        _close(o_upd, t_upd)
        params = oc.apply_updates(params, o_upd, inplace=False)


@needs_optax
@pytest.mark.parametrize("debias", [True, False])
def test_ema(debias):
    _compare(T.ema(0.8, debias=debias, backend=B), optax.ema(0.8, debias=debias))


@needs_optax
@pytest.mark.parametrize("inplace", [True, False])
def test_clip_and_centralize(inplace):
    _compare(
        oc.chain(T.centralize(), T.clip(0.5, backend=B)),
        optax.chain(optax.centralize(), optax.clip(0.5)),
        inplace=inplace,
    )


@needs_optax
def test_apply_if_finite_skips_non_finite_steps_like_optax():
    def grads(k):
        g = _tree(k)
        if k in (2, 4, 5, 6):  # one bad step, then three in a row (the third is applied)
            g["b"][1] = float("nan") if k != 5 else float("inf")
        return g

    def close_or_nan(ours, theirs):
        for k in SHAPES:
            expected = torch.tensor(np.array(theirs[k]))
            torch.testing.assert_close(ours[k], expected, rtol=1e-10, atol=1e-12, equal_nan=True)

    ours = T.apply_if_finite(oc.chain(T.trace(0.9, backend=B), T.scale(-0.1, backend=B)), 2)
    theirs = optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), 2)
    params = _tree(100)
    o_state, t_state = ours.init(params), theirs.init(_to_jax(params))
    theirs_update = jax.jit(theirs.update)
    for k in range(8):
        g = grads(k)
        o_upd, o_state = ours.update(g, o_state, params=params, inplace=False)
        t_upd, t_state = theirs_update(_to_jax(g), t_state, _to_jax(params))
        close_or_nan(o_upd, t_upd)
        assert o_state.notfinite_count == int(t_state.notfinite_count)
        assert o_state.total_notfinite == int(t_state.total_notfinite)
        if k == 6:  # the applied NaN step poisons the momentum, as in optax
            break
    with pytest.raises(TypeError, match="max_consecutive_errors"):
        T.apply_if_finite(oc.sgd(0.1), -1)


@needs_optax
@pytest.mark.parametrize("mean", [True, False])
def test_multi_steps_accumulates_like_optax(mean):
    ours = T.MultiSteps(oc.adam(0.1, backend=B), 3, use_grad_mean=mean)
    theirs = optax.MultiSteps(optax.adam(0.1), 3, use_grad_mean=mean, accumulator_dtype=jnp.float64)
    _compare(ours.gradient_transformation(), theirs.gradient_transformation(), steps=9)
    schedule = T.MultiSteps(oc.sgd(0.1, backend=B), lambda step: 1 + step)
    state = schedule.init({"x": torch.zeros(2)})
    emitted = []
    for _ in range(6):
        _, state = schedule.update({"x": torch.ones(2)}, state)
        emitted.append(schedule.has_updated(state))
    assert emitted == [True, False, True, False, False, True]


@needs_optax
def test_multi_transform_applies_one_transformation_per_label_like_optax():
    labels = {"w": "adam", "b": "sgd", "s": "sgd"}
    ours = T.multi_transform(
        {"adam": oc.adam(0.1, backend=B), "sgd": oc.sgd(0.05, 0.9, backend=B)}, labels
    )
    theirs = optax.multi_transform({"adam": optax.adam(0.1), "sgd": optax.sgd(0.05, 0.9)}, labels)
    _compare(ours, theirs)
    assert T.partition is T.multi_transform
    bad = T.multi_transform({"adam": oc.adam(0.1)}, labels)
    with pytest.raises(ValueError, match="without a transformation"):
        bad.init(_tree(0))


@needs_optax
@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_fast_parameters_match_optax(reset_state):
    ours = T.lookahead(oc.adam(0.1, backend=B), 3, 0.5, reset_state=reset_state)
    theirs = optax.lookahead(optax.adam(0.1), 3, 0.5, reset_state=reset_state)
    params = _tree(100)
    o_state = ours.init(params)
    t_params = optax.LookaheadParams.init_synced(_to_jax(params))
    t_state = theirs.init(t_params)
    theirs_update = jax.jit(theirs.update)
    for k in range(10):
        g = _tree(k)
        upd, o_state = ours.update(g, o_state, params=params, inplace=False)
        params = oc.apply_updates(params, upd, inplace=False)
        t_upd, t_state = theirs_update(_to_jax(g), t_state, t_params)
        t_params = optax.apply_updates(t_params, t_upd)
        _close(params, t_params.fast)


def test_lookahead_is_differentiable():
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    tx = T.lookahead(oc.sgd(0.1, backend=B), 2, 0.5)
    params, state = [w], None
    state = tx.init(params)
    for _ in range(4):
        grads = [2 * params[0]]  # d/dw of w^2
        upd, state = tx.update(grads, state, params=params, inplace=False)
        params = oc.apply_updates(params, upd, inplace=False)
    params[0].sum().backward()
    assert torch.isfinite(w.grad).all() and (w.grad != 0).all()


def test_add_noise_has_the_annealed_variance_and_is_reproducible():
    tx = T.add_noise(0.5, 0.55, seed=3)
    zeros = {"x": torch.zeros(200_000, dtype=torch.float64)}
    state = tx.init(zeros)
    draws = []
    for t in (1, 2, 3):
        upd, state = tx.update({"x": torch.zeros(200_000, dtype=torch.float64)}, state)
        draws.append(upd["x"])
        expected = 0.5 / t**0.55
        assert upd["x"].var().item() == pytest.approx(expected, rel=0.02)
    again = tx.init(zeros)
    upd, _ = tx.update({"x": torch.zeros(200_000, dtype=torch.float64)}, again)
    assert torch.equal(upd["x"], draws[0])
    assert not torch.equal(draws[0], draws[1])
    with pytest.raises(oc.HyperparameterError, match="^eta=-1"):
        T.add_noise(-1.0, 0.5)


# ---------------------------------------------- per-tensor statistics (optcompile.leafstats)


@needs_optax
@pytest.mark.parametrize("min_norm, coefficient, eps", [(0.0, 1.0, 0.0), (0.5, 0.3, 1e-3)])
def test_scale_by_trust_ratio_matches_optax(min_norm, coefficient, eps):
    def grads(k):
        g = _tree(k)
        if k == 1:
            g["b"] = torch.zeros_like(g["b"])  # a zero norm: ratio 1 (or min_norm's)
        return g

    _compare(
        oc.chain(T.scale_by_trust_ratio(min_norm, coefficient, eps, backend=B), T.scale(-0.1)),
        optax.chain(optax.scale_by_trust_ratio(min_norm, coefficient, eps), optax.scale(-0.1)),
        grads=grads,
    )


@needs_optax
@pytest.mark.parametrize("inplace", [True, False])
def test_clip_by_block_rms_matches_optax(inplace):
    _compare(
        oc.chain(T.trace(0.5, backend=B), T.clip_by_block_rms(0.8, backend=B)),
        optax.chain(optax.trace(0.5), optax.clip_by_block_rms(0.8)),
        inplace=inplace,
    )


@needs_optax
def test_adaptive_grad_clip_matches_optax_unitwise_on_every_rank():
    shapes = {"v": (5,), "m": (3, 4), "h": (2, 3, 4), "c": (2, 2, 3, 4), "s": (), "col": (4, 1)}
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    params["m"][:, 1] = 0.0  # a zero unit: eps bounds its allowed norm
    ours, theirs = T.adaptive_grad_clip(0.3, backend=B), optax.adaptive_grad_clip(0.3)
    for k in range(3):
        grads = {n: (k + 1) * torch.randn_like(p) for n, p in params.items()}
        grads["v"] = torch.zeros_like(grads["v"])  # exactly zero: passes unchanged
        o_upd, _ = ours.update(grads, ours.init(params), params=params, inplace=False)
        jax_tree = {n: jnp.asarray(v.numpy()) for n, v in grads.items()}
        jax_params = {n: jnp.asarray(v.numpy()) for n, v in params.items()}
        t_upd, _ = theirs.update(jax_tree, theirs.init(jax_params), jax_params)
        for n in shapes:
            expected = torch.tensor(np.array(t_upd[n]))
            torch.testing.assert_close(o_upd[n], expected, rtol=1e-10, atol=1e-12)
        assert any(not torch.equal(o_upd[n], grads[n]) for n in shapes)  # some unit clipped


def test_leafwise_transforms_validate_at_construction_and_need_params():
    with pytest.raises(oc.HyperparameterError, match="^threshold=0"):
        T.clip_by_block_rms(0.0)
    with pytest.raises(oc.HyperparameterError, match="^clipping=-1"):
        T.adaptive_grad_clip(-1.0)
    with pytest.raises(oc.HyperparameterError, match="^min_norm=-1"):
        T.scale_by_trust_ratio(min_norm=-1.0)
    tx = T.scale_by_trust_ratio()
    g = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="reads the parameters: pass params="):
        tx.update(g, tx.init(g))
    with pytest.raises(ValueError, match=r"^params: leaf 0 is \(3,\) but its update has shape"):
        tx.update(g, tx.init(g), params={"w": torch.ones(3)})
    assert oc.scale_by_trust_ratio is T.scale_by_trust_ratio
    assert {"clip_by_block_rms", "adaptive_grad_clip"} <= set(oc.__all__)
