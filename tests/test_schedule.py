"""Schedules against their closed forms, torch's LinearLR, and a compiled trace."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import optcompile
from optcompile.errors import HyperparameterError
from optcompile.schedule import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    join_schedules,
    linear_schedule,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)

COUNTS = [0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 12, 15, 20, 50]


def _poly(t, v0, v1, p, steps, begin):
    return (v0 - v1) * (1 - min(max(t - begin, 0), steps) / steps) ** p + v1


def _cosine(t, v0, steps, alpha):
    return v0 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)) + alpha)


# (schedule, closed form in Python floats)
CASES = {
    "constant": (constant_schedule(0.3), lambda t: 0.3),
    "linear": (linear_schedule(1.0, 0.2, 8, 3), lambda t: _poly(t, 1.0, 0.2, 1, 8, 3)),
    "polynomial": (
        polynomial_schedule(2.0, 0.5, 2.5, 10, 2),
        lambda t: _poly(t, 2.0, 0.5, 2.5, 10, 2),
    ),
    "linear_up": (linear_schedule(0.0, 1.0, 10), lambda t: min(t, 10) / 10),
    "exponential": (
        exponential_decay(1.0, 0.5, transition_begin=2, transition_steps=3),
        lambda t: 0.5 ** (max(t - 2, 0) / 3),
    ),
    "exponential_staircase_end": (
        exponential_decay(1.0, 0.5, 2, 3, staircase=True, end_value=0.2),
        lambda t: max(0.5 ** (max(t - 2, 0) // 3), 0.2),
    ),
    "exponential_growth_end": (
        exponential_decay(1.0, 2.0, transition_steps=4, end_value=5.0),
        lambda t: min(2.0 ** (t / 4), 5.0),
    ),
    "cosine": (cosine_decay_schedule(1.5, 10, alpha=0.1), lambda t: _cosine(t, 1.5, 10, 0.1)),
    "warmup_cosine": (
        warmup_cosine_decay_schedule(0.1, 1.0, warmup_steps=4, decay_steps=12, end_value=0.05),
        lambda t: (
            0.1 + 0.9 * t / 4
            if t < 4
            else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t - 4, 8) / 8))
        ),
    ),
    "piecewise": (
        piecewise_constant_schedule(1.0, {9: 0.1, 3: 0.5, 10: 2.0}),
        lambda t: 1.0 * (0.5 if t >= 3 else 1) * (0.1 if t >= 9 else 1) * (2.0 if t >= 10 else 1),
    ),
    "join": (
        join_schedules(
            [constant_schedule(1.0), linear_schedule(1.0, 0.0, 4), cosine_decay_schedule(2.0, 6)],
            [3, 10],
        ),
        lambda t: (
            1.0 if t < 3 else 1.0 - min(t - 3, 4) / 4 if t < 10 else _cosine(t - 10, 2.0, 6, 0.0)
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_closed_form_for_int_counts(name):
    schedule, closed_form = CASES[name]
    for t in COUNTS:
        value = schedule(t)
        assert type(value) is float
        assert value == pytest.approx(closed_form(t), rel=1e-12, abs=1e-15), t


@pytest.mark.parametrize("name", list(CASES))
def test_tensor_counts_agree_with_int_counts(name):
    schedule, _ = CASES[name]
    for t in COUNTS:
        value = schedule(torch.tensor(t))
        assert value.shape == () and value.dtype == torch.get_default_dtype()
        assert not value.requires_grad
        assert value.item() == pytest.approx(schedule(t), rel=1e-6, abs=1e-7), t


@pytest.mark.parametrize("name", list(CASES))
def test_tensor_counts_trace_without_graph_breaks_or_recompiles(name):
    schedule, _ = CASES[name]
    torch._dynamo.reset()  # all schedules share one code object: start from an empty cache
    counter = CompileCounter()
    compiled = torch.compile(schedule, backend=counter, fullgraph=True)
    for t in (0, 4, 11, 30):
        assert compiled(torch.tensor(t)).item() == pytest.approx(schedule(t), rel=1e-6, abs=1e-7)
    assert counter.frame_count == 1


def test_seed_linear_schedule():
    schedule = linear_schedule(
        init_value=1e-3, end_value=1e-4, transition_steps=10000, transition_begin=2000
    )
    expected = {0: 1e-3, 2000: 1e-3, 7000: 5.5e-4, 12000: 1e-4, 20000: 1e-4}
    for t, value in expected.items():
        assert schedule(t) == pytest.approx(value, rel=1e-12)
        assert schedule(torch.tensor(t)).item() == pytest.approx(value, rel=1e-6)


def test_linear_schedule_matches_torch_linear_lr():
    base_lr, start, end, total = 0.1, 0.25, 1.0, 8
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=base_lr)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start, end, total)
    schedule = linear_schedule(base_lr * start, base_lr * end, total)
    for t in range(15):
        assert schedule(t) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_degenerate_arguments_give_a_constant_init_value():
    # TorchOpt and optax: no transition steps or a zero decay rate hold the initial value.
    for schedule in (
        polynomial_schedule(0.7, 0.1, 1, transition_steps=0),
        exponential_decay(0.7, 0.5, transition_steps=0),
        exponential_decay(0.7, 0.0, end_value=0.1),
    ):
        assert [schedule(t) for t in (0, 1, 100)] == [0.7, 0.7, 0.7]
        assert schedule(torch.tensor(5)).item() == pytest.approx(0.7)


def test_join_passes_the_shifted_count_to_later_schedules():
    seen = []

    def record(count):
        seen.append(count)
        return 0.0

    join_schedules([record, record, record], [3, 10])(12)
    assert seen == [2]


ERRORS = [
    (linear_schedule, ("a", 0.1, 10), TypeError, "init_value must be a real number"),
    (linear_schedule, (1.0, None, 10), TypeError, "end_value must be a real number"),
    (linear_schedule, (1.0, 0.1, 10.0), TypeError, "transition_steps must be an int"),
    (linear_schedule, (1.0, 0.1, True), TypeError, "transition_steps must be an int"),
    (linear_schedule, (1.0, 0.1, -1), HyperparameterError, r"transition_steps=-1 .*>= 0"),
    (linear_schedule, (1.0, 0.1, 5, -2), HyperparameterError, r"transition_begin=-2 .*>= 0"),
    (polynomial_schedule, (1.0, 0.1, -1.0, 5), HyperparameterError, r"power=-1.0 .*>= 0"),
    (polynomial_schedule, (1.0, 0.1, torch.ones(2), 5), TypeError, r"power .*shape \(2,\)"),
    (exponential_decay, (1.0, -0.5), HyperparameterError, r"decay_rate=-0.5 .*>= 0"),
    (exponential_decay, (1.0, 0.5, 0, -1), HyperparameterError, "transition_steps=-1"),
    (exponential_decay, (1.0, 0.5, 0, 1, 1), TypeError, "staircase must be a bool"),
    (exponential_decay, (1.0, 0.5, 0, 1, False, "x"), TypeError, "end_value must be a real"),
    (cosine_decay_schedule, (1.0, 0), HyperparameterError, r"decay_steps=0 .*>= 1"),
    (warmup_cosine_decay_schedule, (0.0, 1.0, 5, 5), HyperparameterError, r"decay_steps=5 .*>= 6"),
    (warmup_cosine_decay_schedule, (0.0, 1.0, -1, 5), HyperparameterError, "warmup_steps=-1"),
    (piecewise_constant_schedule, (1.0, [(3, 0.5)]), TypeError, "boundaries_and_scales must be"),
    (piecewise_constant_schedule, (1.0, {3: -0.5}), HyperparameterError, r"\[3\]=-0.5 .*>= 0"),
    (piecewise_constant_schedule, (1.0, {-3: 0.5}), HyperparameterError, "key -3=-3"),
    (piecewise_constant_schedule, (1.0, {2.5: 0.5}), TypeError, "key 2.5 must be an int"),
    (join_schedules, ([], []), ValueError, "at least one schedule"),
    (join_schedules, ([abs, abs], []), ValueError, "len\\(schedules\\) - 1 = 1"),
    (join_schedules, ([abs, 0.1], [3]), TypeError, r"schedules\[1\] must be callable"),
    (join_schedules, ([abs, abs, abs], [5, 3]), ValueError, "must not decrease"),
    (join_schedules, ([abs, abs], [-1]), HyperparameterError, r"boundaries\[0\]=-1"),
]


@pytest.mark.parametrize(("factory", "args", "error", "match"), ERRORS)
def test_bad_arguments_are_rejected_at_construction(factory, args, error, match):
    with pytest.raises(error, match=match):
        factory(*args)


# ------------------------------------------------------------------ optax's composed schedules

_CYCLE = {"init_value": 0.1, "peak_value": 1.0, "warmup_steps": 3, "decay_steps": 10}
# (ours, optax's of the same arguments)
OPTAX_CASES = {
    "warmup_constant": (
        lambda m: m.warmup_constant_schedule(0.1, 1.0, 5),
        "warmup_constant_schedule",
    ),
    "warmup_exponential_decay": (
        lambda m: m.warmup_exponential_decay_schedule(
            0.1, 1.0, 4, 3, 0.5, transition_begin=2, staircase=True, end_value=0.2
        ),
        "warmup_exponential_decay_schedule",
    ),
    "sgdr": (lambda m: m.sgdr_schedule([_CYCLE, {**_CYCLE, "peak_value": 0.5}]), "sgdr_schedule"),
    "piecewise_linear": (
        lambda m: m.piecewise_interpolate_schedule("linear", 2.0, {3: 0.5, 9: 0.1, 10: 3.0}),
        "piecewise_interpolate_schedule",
    ),
    "piecewise_cosine": (
        lambda m: m.piecewise_interpolate_schedule("cosine", 2.0, {4: 0.5, 12: 0.1}),
        "piecewise_interpolate_schedule",
    ),
    "linear_onecycle": (lambda m: m.linear_onecycle_schedule(40, 2.0), "linear_onecycle_schedule"),
    "cosine_onecycle": (
        lambda m: m.cosine_onecycle_schedule(40, 2.0, pct_start=0.25),
        "cosine_onecycle_schedule",
    ),
}


@pytest.mark.parametrize("name", list(OPTAX_CASES))
def test_composed_schedules_match_optax(name):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    import optcompile.schedule as ours

    make, _ = OPTAX_CASES[name]
    schedule, reference = make(ours), make(optax)
    for t in [*COUNTS, 25, 30, 35, 39, 40, 41]:
        expected = float(reference(t))
        # optax evaluates parts of the interpolation in float32 even with x64 enabled.
        assert schedule(t) == pytest.approx(expected, rel=1e-7, abs=1e-12), t
        tensor_value = schedule(torch.tensor(t)).item()
        assert tensor_value == pytest.approx(expected, rel=1e-6, abs=1e-7), t


def test_piecewise_interpolate_traces_without_graph_breaks():
    from optcompile.schedule import piecewise_interpolate_schedule

    schedule = piecewise_interpolate_schedule("cosine", 1.0, {3: 0.5, 8: 0.1})
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(schedule, backend=counter, fullgraph=True)
    for t in (0, 4, 11):
        assert compiled(torch.tensor(t)).item() == pytest.approx(schedule(t), rel=1e-6, abs=1e-7)
    assert counter.frame_count == 1


def test_piecewise_interpolate_rejects_an_unknown_type():
    from optcompile.schedule import piecewise_interpolate_schedule

    with pytest.raises(ValueError, match=r"^interpolate_type='cubic' must be"):
        piecewise_interpolate_schedule("cubic", 1.0)


# ------------------------------------------------------------------ found in review


def test_schedule_returning_a_vector_is_a_clear_error():
    tx = optcompile.sgd(lambda count: torch.ones(3), backend="eager")
    p = torch.ones(2)
    with pytest.raises(TypeError, match=r"a schedule must return a number or a 1-element tensor"):
        tx.update(torch.ones(2), tx.init(p), params=p)
