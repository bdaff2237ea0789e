"""Bad input to the functional API: each error names the argument and says how to fix it."""

from __future__ import annotations

import pytest
import torch

import optcompile
from optcompile import transform as T
from optcompile.clip import clip_grad_norm
from optcompile.errors import HyperparameterError

B = "eager"

# (constructor call, exception, message pattern): raised at construction, never in the step.
CONSTRUCTION = [
    (lambda: optcompile.sgd(lr=-0.1), HyperparameterError, r"^lr=-0\.1 .*>= 0"),
    (lambda: optcompile.sgd(0.1, momentum=-0.5), HyperparameterError, r"^momentum=-0\.5 "),
    (
        lambda: optcompile.sgd(0.1, dampening=1.5),
        HyperparameterError,
        r"^dampening=1\.5 .*\[0, 1\]",
    ),
    (lambda: optcompile.sgd(0.1, nesterov=True), ValueError, r"nesterov=True requires momentum"),
    (
        lambda: optcompile.sgd(0.1, 0.9, dampening=0.1, nesterov=True),
        ValueError,
        r"nesterov=True requires .*dampening = 0",
    ),
    (lambda: optcompile.adam(lr=-1e-3), HyperparameterError, r"^lr=-0\.001 "),
    (lambda: optcompile.adam(torch.tensor(-1.0)), HyperparameterError, r"^lr=tensor\(-1\.\) "),
    (
        lambda: optcompile.adam(betas=(1.0, 0.9)),
        HyperparameterError,
        r"^betas\[0\]=1\.0 .*\[0, 1\)",
    ),
    (
        lambda: optcompile.adam(betas=(0.9, -0.1)),
        HyperparameterError,
        r"^betas\[1\]=-0\.1 .*\[0, 1\)",
    ),
    (lambda: optcompile.adam(betas=(0.9,)), TypeError, r"^betas=\(0\.9,\) must be a pair"),
    (lambda: optcompile.adam(eps=-1e-8), HyperparameterError, r"^eps=-1e-08 "),
    (lambda: optcompile.adam(eps_root=-1.0), HyperparameterError, r"^eps_root=-1\.0 "),
    (lambda: optcompile.adam(weight_decay=-0.1), HyperparameterError, r"^weight_decay=-0\.1 "),
    (lambda: optcompile.adam(lr="fast"), TypeError, r"^lr='fast' must be a real number"),
    (lambda: optcompile.adamw(betas=(0.9, 1.0)), HyperparameterError, r"^betas\[1\]=1\.0 "),
    (lambda: optcompile.adamw(weight_decay=-0.01), HyperparameterError, r"^weight_decay=-0\.01 "),
    (lambda: optcompile.adamax(betas=(1.5, 0.9)), HyperparameterError, r"^betas\[0\]=1\.5 "),
    (lambda: optcompile.radam(betas=(0.9, 1.0)), HyperparameterError, r"^betas\[1\]=1\.0 "),
    (lambda: optcompile.adagrad(lr_decay=-1.0), HyperparameterError, r"^lr_decay=-1\.0 "),
    (
        lambda: optcompile.adagrad(initial_accumulator_value=-1.0),
        HyperparameterError,
        r"^initial_accumulator_value=-1\.0 ",
    ),
    (lambda: optcompile.adadelta(rho=1.5), HyperparameterError, r"^rho=1\.5 .*\[0, 1\]"),
    (lambda: optcompile.rmsprop(alpha=-0.1), HyperparameterError, r"^alpha=-0\.1 "),
    (lambda: optcompile.rmsprop(momentum=-0.9), HyperparameterError, r"^momentum=-0\.9 "),
    (lambda: optcompile.rmsprop(initial_scale=-1.0), HyperparameterError, r"^initial_scale=-1"),
    (lambda: optcompile.adam(backend="tpu"), ValueError, r"^backend='tpu' is not a backend"),
    (lambda: clip_grad_norm(-1.0), HyperparameterError, r"^max_norm=-1\.0 "),
    (lambda: clip_grad_norm(1.0, norm_type=0), HyperparameterError, r"^norm_type=0 "),
    (lambda: T.scale_by_schedule(0.1), TypeError, r"^step_size_fn=0\.1 must be a callable"),
    (lambda: T.scale(torch.ones(2)), TypeError, r"step_size must be a floating 0-d tensor"),
    (lambda: T.trace(momentum=-1.0), HyperparameterError, r"momentum=-1\.0 "),
    (
        lambda: optcompile.chain(optcompile.sgd(0.1), 3),
        TypeError,
        r"^chain: argument 1 is int, expected a GradientTransformation",
    ),
    (
        lambda: optcompile.chain(lambda g: g, optcompile.sgd(0.1)),
        TypeError,
        r"^chain: argument 0 is function",
    ),
]


@pytest.mark.parametrize("make, error, match", CONSTRUCTION)
def test_construction_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def _p():
    return (torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))


def _g():
    return (torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


def _adam():
    return optcompile.adam(0.1, backend=B)


# (transformation, call(tx) that must fail, exception, message pattern).
UPDATE = [
    pytest.param(
        _adam,
        lambda tx: tx.update(_g(), tx.init(_p())[:1]),
        ValueError,
        r"^state: expected a tuple of 2 member states \(what init\(\) returned\), got a tuple of 1",
        id="chain-state-too-short",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.update(_g(), (*tx.init(_p()), optcompile.EmptyState())),
        ValueError,
        r"got a tuple of 3",
        id="chain-state-too-long",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.update(_g(), optcompile.sgd(0.1, momentum=0.9).init(_p())),
        ValueError,
        r"^state: scale_by_adam expects a ScaleByAdamState, got TraceState",
        id="sgd-state-into-adam",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.update(_g(), optcompile.sgd(0.1).init(_p())),
        ValueError,
        r"^state: expected a tuple of 2 member states.*not a member's or another optimizer's",
        id="plain-sgd-state-into-adam",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.update(_g(), tx.init(_p())[0]),
        ValueError,
        r"^state: expected a tuple of 2 member states.*got a ScaleByAdamState",
        id="member-state-instead-of-tuple",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.update(_g(), None),
        ValueError,
        r"got a NoneType\. Call init\(params\) first",
        id="chain-before-init",
    ),
    pytest.param(
        lambda: T.scale_by_adam(backend=B),
        lambda tx: tx.update(_g(), None),
        ValueError,
        r"^state: scale_by_adam expects a ScaleByAdamState, got NoneType .*init\(\) not called",
        id="transform-before-init",
    ),
    pytest.param(
        lambda: T.trace(0.9, backend=B),
        lambda tx: tx.update(_g(), tx.init(_p()[:1])),
        ValueError,
        r"^state: TraceState\.trace holds 1 entries but the updates have 2 leaves",
        id="state-for-other-params",
    ),
    pytest.param(
        lambda: optcompile.adam(0.1, weight_decay=0.1, backend=B),
        lambda tx: tx.update(_g(), tx.init(_p())),
        ValueError,
        r"reads the parameters: pass params= to update\(\)",
        id="adam-weight-decay-without-params",
    ),
    pytest.param(
        lambda: optcompile.adamw(0.1, backend=B),
        lambda tx: tx.update(_g(), tx.init(_p())),
        ValueError,
        r"reads the parameters: pass params= to update\(\)",
        id="adamw-without-params",
    ),
    pytest.param(
        lambda: T.add_decayed_weights(0.1, (True, False), backend=B),
        lambda tx: tx.update(_g(), tx.init(_p())),
        ValueError,
        r"reads the parameters: pass params= to update\(\)",
        id="masked-decay-without-params",
    ),
    pytest.param(
        lambda: optcompile.sgd(0.1, weight_decay=0.1, backend=B),
        lambda tx: tx.update(_g(), tx.init(_p()), params=_p()[:1]),
        ValueError,
        r"^params: 1 tensors, but the updates have 2",
        id="params-of-other-structure",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.update((torch.ones(3, dtype=torch.int64), _g()[1]), tx.init(_p())),
        TypeError,
        r"^updates: leaf 0 is torch\.int64; optcompile transforms need floating-point tensors",
        id="int64-updates",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.init((torch.zeros(3, dtype=torch.int64), _p()[1])),
        TypeError,
        r"^params: leaf 0 is torch\.int64",
        id="int64-params-at-init",
    ),
    pytest.param(
        _adam,
        lambda tx: tx.init((torch.zeros(3), [1.0, 2.0])),
        TypeError,
        r"^params: leaf 1 is float; expected a floating-point tensor",
        id="non-tensor-params",
    ),
]


@pytest.mark.parametrize("make, call, error, match", UPDATE)
def test_update_errors(make, call, error, match):
    tx = make()
    with pytest.raises(error, match=match):
        call(tx)


# ------------------------------------------------------------------ found in review


def test_gradient_of_another_shape_is_rejected_not_broadcast():
    tx = optcompile.adam(0.1, backend="eager")
    state = tx.init([torch.randn(3)])
    with pytest.raises(ValueError, match=r"ScaleByAdamState\.mu\[0\] has shape \(3,\) but"):
        tx.update([torch.randn(2, 3)], state)


def test_params_of_another_shape_are_rejected():
    tx = optcompile.adam(0.1, weight_decay=0.1, backend="eager")
    state = tx.init([torch.randn(3)])
    with pytest.raises(ValueError, match=r"params: leaf 0 has shape \(2,\) but its update"):
        tx.update([torch.randn(3)], state, params=[torch.randn(2)])
