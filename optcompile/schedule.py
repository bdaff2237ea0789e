"""Step-size schedules: functions of the step count (TorchOpt's three plus optax's common ones).

A schedule maps a step count to a value. The count may be a Python ``int`` (the value is then a
Python ``float``) or an integer 0-d tensor such as the per-leaf ``count`` of
``scale_by_schedule`` (the value is then a 0-d tensor of the default float dtype on the count's
device). Tensor counts are evaluated with torch ops only, so a schedule traces into
``torch.compile(fullgraph=True)`` without graph breaks, and a new count never recompiles.

Every hyper-parameter is checked and turned into a Python number when the schedule is built;
the schedule itself never checks anything and carries no autograd history.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch

from optcompile.errors import HyperparameterError

__all__ = [
    "Schedule",
    "constant_schedule",
    "polynomial_schedule",
    "linear_schedule",
    "exponential_decay",
    "cosine_decay_schedule",
    "warmup_cosine_decay_schedule",
    "piecewise_constant_schedule",
    "join_schedules",
    "warmup_constant_schedule",
    "warmup_exponential_decay_schedule",
    "sgdr_schedule",
    "piecewise_interpolate_schedule",
    "linear_onecycle_schedule",
    "cosine_onecycle_schedule",
]

Schedule = Callable[[int | torch.Tensor], float | torch.Tensor]
"""``count -> value``: ``int -> float`` and 0-d integer tensor -> 0-d float tensor."""


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | torch.Tensor):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise TypeError(f"{name} must be a real number, got a tensor of shape {tuple(value.shape)}")
    return float(value)


def _integer(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise HyperparameterError(name, value, f">= {minimum}")
    return int(value)


def _from_tensor_rule(rule: Callable[[torch.Tensor], torch.Tensor]) -> Schedule:
    """Make a schedule from ``rule``, written once in torch ops on a floating 0-d count.

    Python counts are evaluated in float64 and returned as a ``float``; tensor counts are cast
    to the default dtype, so the rule traces into a compiled graph.
    """

    def schedule(count: int | torch.Tensor) -> float | torch.Tensor:
        if isinstance(count, torch.Tensor):
            return rule(count.to(torch.get_default_dtype()))
        return float(rule(torch.tensor(count, dtype=torch.float64)))

    return schedule


def constant_schedule(value: float) -> Schedule:
    """The schedule that always returns ``value``.

    Args:
        value: the constant.

    Returns:
        A schedule.

    Raises:
        TypeError: ``value`` is not a real number.

    Examples:
        >>> constant_schedule(0.1)(42)
        0.1
    """
    value = _real("value", value)
    return _from_tensor_rule(lambda count: torch.full_like(count, value))


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Polynomial transition from ``init_value`` to ``end_value`` (TorchOpt/optax).

    .. math::
        v(t) = (v_0 - v_1)\left(1 - \frac{\operatorname{clip}(t - t_0,\ 0,\ T)}{T}\right)^p + v_1

    with :math:`v_0` = ``init_value``, :math:`v_1` = ``end_value``, :math:`p` = ``power``,
    :math:`T` = ``transition_steps`` and :math:`t_0` = ``transition_begin``: the value is held at
    :math:`v_0` until :math:`t_0` and at :math:`v_1` from :math:`t_0 + T` on.

    Args:
        init_value: value before and at ``transition_begin``.
        end_value: value from ``transition_begin + transition_steps`` on.
        power: exponent :math:`p \ge 0` of the polynomial (1 is linear).
        transition_steps: length :math:`T \ge 0` of the transition. ``0`` gives the constant
            schedule ``init_value`` (as in TorchOpt and optax).
        transition_begin: first step :math:`t_0 \ge 0` of the transition.

    Returns:
        A schedule.

    Raises:
        TypeError: a value is not a real number or a step is not an int.
        HyperparameterError: ``power``, ``transition_steps`` or ``transition_begin`` is negative.

    Examples:
        >>> sched = polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
        >>> sched(5), sched(10), sched(20)
        (0.25, 0.0, 0.0)
    """
    init = _real("init_value", init_value)
    end = _real("end_value", end_value)
    power = _real("power", power)
    if power < 0:
        raise HyperparameterError("power", power, ">= 0")
    steps = _integer("transition_steps", transition_steps, 0)
    begin = _integer("transition_begin", transition_begin, 0)
    if steps == 0:
        return constant_schedule(init)

    def rule(count: torch.Tensor) -> torch.Tensor:
        frac = 1.0 - torch.clamp(count - begin, 0, steps) / steps
        return (init - end) * frac**power + end

    return _from_tensor_rule(rule)


def linear_schedule(
    init_value: float,
    end_value: float,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Linear transition from ``init_value`` to ``end_value``: :func:`polynomial_schedule`, p = 1.

    .. math::
        v(t) = v_0 + (v_1 - v_0)\,\frac{\operatorname{clip}(t - t_0,\ 0,\ T)}{T}

    Args:
        init_value: value before and at ``transition_begin``.
        end_value: value from ``transition_begin + transition_steps`` on.
        transition_steps: length :math:`T \ge 0` of the transition (0: constant ``init_value``).
        transition_begin: first step :math:`t_0 \ge 0` of the transition.

    Returns:
        A schedule.

    Raises:
        TypeError: a value is not a real number or a step is not an int.
        HyperparameterError: a step argument is negative.

    Examples:
        >>> sched = linear_schedule(1e-3, 1e-4, transition_steps=10000, transition_begin=2000)
        >>> round(sched(7000), 10)
        0.00055
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def exponential_decay(
    init_value: float,
    decay_rate: float,
    transition_begin: int = 0,
    transition_steps: int = 1,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    r"""Exponential decay of ``init_value`` by ``decay_rate`` every ``transition_steps`` (TorchOpt).

    .. math::
        p = \frac{\max(t - t_0,\ 0)}{T} \quad(\lfloor p \rfloor \text{ if staircase}), \qquad
        v(t) = v_0\, r^{p}

    then clipped to ``end_value`` :math:`v_1` if given: :math:`\max(v, v_1)` when :math:`r < 1`,
    :math:`\min(v, v_1)` otherwise.

    Args:
        init_value: value :math:`v_0` before and at ``transition_begin``.
        decay_rate: factor :math:`r \ge 0` per ``transition_steps``. ``0`` gives the constant
            schedule ``init_value`` (as in TorchOpt and optax).
        transition_begin: first step :math:`t_0 \ge 0` of the decay.
        transition_steps: steps :math:`T \ge 0` per factor :math:`r`. ``0`` gives the constant
            schedule ``init_value`` (as in TorchOpt and optax).
        staircase: decay at discrete intervals (integer :math:`p`).
        end_value: bound that the value never passes, or ``None``.

    Returns:
        A schedule.

    Raises:
        TypeError: a value is not a real number, a step is not an int or ``staircase`` is not
            a bool.
        HyperparameterError: ``decay_rate`` or a step argument is negative.

    Examples:
        >>> sched = exponential_decay(1.0, 0.5, transition_steps=2, end_value=0.2)
        >>> sched(2), sched(4), sched(6)
        (0.5, 0.25, 0.2)
    """
    init = _real("init_value", init_value)
    rate = _real("decay_rate", decay_rate)
    if rate < 0:
        raise HyperparameterError("decay_rate", rate, ">= 0")
    begin = _integer("transition_begin", transition_begin, 0)
    steps = _integer("transition_steps", transition_steps, 0)
    if not isinstance(staircase, bool):
        raise TypeError(f"staircase must be a bool, got {type(staircase).__name__}")
    end = None if end_value is None else _real("end_value", end_value)
    if steps == 0 or rate == 0:
        return constant_schedule(init)

    def rule(count: torch.Tensor) -> torch.Tensor:
        p = torch.clamp(count - begin, min=0) / steps
        if staircase:
            p = torch.floor(p)
        value = init * rate**p
        if end is None:
            return value
        return torch.clamp(value, min=end) if rate < 1 else torch.clamp(value, max=end)

    return _from_tensor_rule(rule)


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps`` (optax).

    .. math::
        v(t) = v_0\left((1 - \alpha)\,\tfrac12\left(1 + \cos\frac{\pi\,\operatorname{clip}(t,
        0, T)}{T}\right) + \alpha\right)

    Args:
        init_value: value :math:`v_0` at step 0.
        decay_steps: length :math:`T \ge 1` of the decay.
        alpha: final value as a fraction of ``init_value``.

    Returns:
        A schedule.

    Raises:
        TypeError: a value is not a real number or ``decay_steps`` is not an int.
        HyperparameterError: ``decay_steps`` < 1.

    Examples:
        >>> sched = cosine_decay_schedule(1.0, decay_steps=10, alpha=0.1)
        >>> sched(0), round(sched(5), 10), round(sched(10), 10)
        (1.0, 0.55, 0.1)
    """
    init = _real("init_value", init_value)
    steps = _integer("decay_steps", decay_steps, 1)
    alpha = _real("alpha", alpha)

    def rule(count: torch.Tensor) -> torch.Tensor:
        cosine = 0.5 * (1.0 + torch.cos(math.pi * torch.clamp(count, 0, steps) / steps))
        return init * ((1.0 - alpha) * cosine + alpha)

    return _from_tensor_rule(rule)


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float = 0.0,
) -> Schedule:
    r"""Linear warm-up to ``peak_value``, then cosine decay to ``end_value`` (optax).

    .. math::
        v(t) = \begin{cases}
            v_0 + (v_p - v_0)\,t / W & t < W \\
            v_1 + (v_p - v_1)\,\tfrac12\left(1 + \cos\frac{\pi \min(t - W,\ D - W)}{D - W}\right)
                & t \ge W
        \end{cases}

    ``decay_steps`` :math:`D` counts the warm-up: the schedule reaches ``end_value`` at step
    :math:`D`.

    Args:
        init_value: value :math:`v_0` at step 0.
        peak_value: value :math:`v_p` at the end of the warm-up.
        warmup_steps: warm-up length :math:`W \ge 0`.
        decay_steps: total length :math:`D > W`, warm-up included.
        end_value: final value :math:`v_1`.

    Returns:
        A schedule.

    Raises:
        TypeError: a value is not a real number or a step is not an int.
        HyperparameterError: ``warmup_steps`` < 0 or ``decay_steps`` <= ``warmup_steps``.

    Examples:
        >>> sched = warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=12)
        >>> sched(1), sched(2), round(sched(7), 10), sched(12)
        (0.5, 1.0, 0.5, 0.0)
    """
    init = _real("init_value", init_value)
    peak = _real("peak_value", peak_value)
    end = _real("end_value", end_value)
    warmup = _integer("warmup_steps", warmup_steps, 0)
    total = _integer("decay_steps", decay_steps, warmup + 1)
    alpha = 0.0 if peak == 0.0 else end / peak
    return join_schedules(
        [linear_schedule(init, peak, warmup), cosine_decay_schedule(peak, total - warmup, alpha)],
        [warmup],
    )


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: Mapping[int, float] | None = None
) -> Schedule:
    r"""``init_value`` multiplied by every scale whose boundary has been reached (optax).

    .. math::
        v(t) = v_0 \prod_{b \le t} s_b

    Args:
        init_value: value :math:`v_0` before the first boundary.
        boundaries_and_scales: map from a step :math:`b \ge 0` to the factor :math:`s_b \ge 0`
            applied from that step on; ``None`` or empty gives a constant schedule.

    Returns:
        A schedule.

    Raises:
        TypeError: ``boundaries_and_scales`` is not a mapping, a boundary is not an int or a
            scale is not a real number.
        HyperparameterError: a boundary or a scale is negative.

    Examples:
        >>> sched = piecewise_constant_schedule(1.0, {3: 0.5, 6: 0.1})
        >>> sched(2), sched(3), round(sched(6), 10)
        (1.0, 0.5, 0.05)
    """
    init = _real("init_value", init_value)
    if boundaries_and_scales is None:
        boundaries_and_scales = {}
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            "boundaries_and_scales must be a mapping from step to scale, "
            f"got {type(boundaries_and_scales).__name__}"
        )
    steps_and_scales = []
    for boundary, scale in boundaries_and_scales.items():
        name = f"boundaries_and_scales[{boundary!r}]"
        step = _integer(f"boundaries_and_scales key {boundary!r}", boundary, 0)
        scale = _real(name, scale)
        if scale < 0:
            raise HyperparameterError(name, scale, ">= 0")
        steps_and_scales.append((step, scale))
    steps_and_scales.sort()

    def rule(count: torch.Tensor) -> torch.Tensor:
        value = torch.full_like(count, init)
        for boundary, scale in steps_and_scales:
            value = torch.where(count < boundary, value, value * scale)
        return value

    return _from_tensor_rule(rule)


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    r"""Run ``schedules[i]`` from ``boundaries[i - 1]`` on, restarting its count there (optax).

    .. math::
        v(t) = s_i(t - b_{i-1}) \quad \text{for } b_{i-1} \le t < b_i, \qquad b_{-1} = 0,\
        b_n = \infty

    (``schedules[0]`` sees the count unchanged.)

    Args:
        schedules: the :math:`n + 1` schedules.
        boundaries: the :math:`n` non-decreasing steps :math:`b_i \ge 0` where the next schedule
            starts.

    Returns:
        A schedule. For a tensor count every schedule is evaluated and the results are selected
        with ``torch.where``, so the schedule traces without graph breaks.

    Raises:
        TypeError: a schedule is not callable or a boundary is not an int.
        ValueError: ``schedules`` is empty, ``len(boundaries) != len(schedules) - 1`` or the
            boundaries decrease.
        HyperparameterError: a boundary is negative.

    Examples:
        >>> sched = join_schedules([constant_schedule(1.0), linear_schedule(1.0, 0.0, 4)], [10])
        >>> sched(9), sched(12)
        (1.0, 0.5)
    """
    schedules = list(schedules)
    bounds = [_integer(f"boundaries[{i}]", b, 0) for i, b in enumerate(boundaries)]
    for i, schedule in enumerate(schedules):
        if not callable(schedule):
            raise TypeError(f"schedules[{i}] must be callable, got {type(schedule).__name__}")
    if not schedules:
        raise ValueError("schedules must hold at least one schedule")
    if len(bounds) != len(schedules) - 1:
        raise ValueError(
            f"boundaries must hold len(schedules) - 1 = {len(schedules) - 1} steps, "
            f"got {len(bounds)}"
        )
    if bounds != sorted(bounds):
        raise ValueError(f"boundaries must not decrease, got {bounds}")

    def schedule(count: int | torch.Tensor) -> float | torch.Tensor:
        if isinstance(count, torch.Tensor):
            value = schedules[0](count)
            for boundary, later in zip(bounds, schedules[1:], strict=True):
                value = torch.where(count < boundary, value, later(count - boundary))
            return value
        i = bisect.bisect_right(bounds, count)
        return schedules[i](count - bounds[i - 1] if i else count)

    return schedule


# ------------------------------------------------------------------ composed schedules (optax)


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    r"""Linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant.

    .. math:: v(t) = v_0 + (v_p - v_0)\min(t / T_w, 1)

    Raises:
        TypeError: a value is not a real number or ``warmup_steps`` is not an int.
        HyperparameterError: ``warmup_steps`` < 0.

    Examples:
        >>> sched = warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
        >>> sched(2), sched(10)
        (0.5, 1.0)
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_exponential_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    r"""Linear warm-up to ``peak_value``, then :func:`exponential_decay` from it (optax).

    .. math:: v(t) = \begin{cases} v_0 + (v_p - v_0)\, t / T_w & t < T_w \\
        \mathrm{exponential\_decay}(v_p, \ldots)(t - T_w) & t \ge T_w \end{cases}

    Raises:
        TypeError, HyperparameterError: as :func:`linear_schedule` and :func:`exponential_decay`.

    Examples:
        >>> sched = warmup_exponential_decay_schedule(0.0, 1.0, 2, 1, 0.5)
        >>> sched(1), sched(2), sched(4)
        (0.5, 1.0, 0.25)
    """
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value,
                decay_rate,
                transition_begin=transition_begin,
                transition_steps=transition_steps,
                staircase=staircase,
                end_value=end_value,
            ),
        ],
        [_integer("warmup_steps", warmup_steps, 0)],
    )


def sgdr_schedule(cosine_kwargs: Sequence[Mapping[str, float]]) -> Schedule:
    r"""SGDR (Loshchilov & Hutter, 2017): warm restarts, one warm-up cosine cycle after another.

    Each mapping holds the arguments of one :func:`warmup_cosine_decay_schedule` cycle
    (``init_value``, ``peak_value``, ``warmup_steps``, ``decay_steps``, ``end_value``); cycle
    :math:`i` starts when the previous ones' ``decay_steps`` have passed.

    Raises:
        TypeError: ``cosine_kwargs`` is not a sequence of mappings.
        ValueError: it is empty.

    Examples:
        >>> cycle = {"init_value": 0.0, "peak_value": 1.0, "warmup_steps": 2, "decay_steps": 10}
        >>> sched = sgdr_schedule([cycle, cycle])
        >>> sched(2), sched(12)
        (1.0, 1.0)
    """
    cycles = list(cosine_kwargs)
    if not cycles:
        raise ValueError("cosine_kwargs must hold at least one cycle")
    schedules, boundaries, step = [], [], 0
    for i, kwargs in enumerate(cycles):
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"cosine_kwargs[{i}] must be a mapping, got {type(kwargs).__name__}")
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += _integer(f"cosine_kwargs[{i}]['decay_steps']", kwargs.get("decay_steps"), 1)
        boundaries.append(step)
    return join_schedules(schedules, boundaries[:-1])


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: float,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    r"""Interpolate between the values of :func:`piecewise_constant_schedule` (optax).

    The value at boundary :math:`b_i` is :math:`v_i = v_0 \prod_{j \le i} s_j`; between
    boundaries it moves from :math:`v_{i-1}` to :math:`v_i` linearly or along a half cosine,
    :math:`v_i + \tfrac12 (v_{i-1} - v_i)(1 + \cos \pi p)`; after the last it stays.

    Raises:
        ValueError: ``interpolate_type`` is neither ``"linear"`` nor ``"cosine"``.
        TypeError: a boundary is not an int or a scale not a real number.
        HyperparameterError: a boundary or a scale is negative.

    Examples:
        >>> sched = piecewise_interpolate_schedule("linear", 1.0, {4: 0.5})
        >>> sched(0), sched(2), sched(8)
        (1.0, 0.75, 0.5)
    """
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError(
            f"interpolate_type={interpolate_type!r} must be either 'linear' or 'cosine'"
        )
    value = _real("init_value", init_value)
    items = sorted((boundaries_and_scales or {}).items())
    bounds, values = [0], [value]
    for boundary, scale in items:
        step = _integer(f"boundaries_and_scales key {boundary!r}", boundary, 0)
        factor = _real(f"boundaries_and_scales[{boundary!r}]", scale)
        if factor < 0:
            raise HyperparameterError(f"boundaries_and_scales[{boundary!r}]", scale, ">= 0")
        bounds.append(step)
        values.append(values[-1] * factor)
    cosine = interpolate_type == "cosine"

    def rule(count: torch.Tensor) -> torch.Tensor:
        result = torch.zeros_like(count) + values[-1] * (count >= bounds[-1])
        for start, end, v0, v1 in zip(
            bounds[:-1], bounds[1:], values[:-1], values[1:], strict=True
        ):
            pct = (count - start) / max(end - start, 1)
            if cosine:
                between = v1 + (v0 - v1) / 2.0 * (torch.cos(math.pi * pct) + 1)
            else:
                between = (v1 - v0) * pct + v0
            inside = (count >= start) & (count < end)
            result = result + torch.where(inside, between, torch.zeros_like(between))
        return result

    return _from_tensor_rule(rule)


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""One cycle (Smith & Topin, 2017), linear: up to ``peak_value``, down, then annealed.

    From :math:`v_p / d` up to :math:`v_p` by ``pct_start * transition_steps``, back to
    :math:`v_p / d` by ``pct_final * transition_steps``, then to :math:`v_p / (d\,d_f)` at
    ``transition_steps`` (optax's ``linear_onecycle_schedule``).

    Raises:
        HyperparameterError: ``transition_steps`` < 1.

    Examples:
        >>> sched = linear_onecycle_schedule(100, 1.0)
        >>> sched(0), sched(30), round(sched(100), 12)
        (0.04, 1.0, 4e-06)
    """
    steps = _integer("transition_steps", transition_steps, 1)
    peak, div = _real("peak_value", peak_value), _real("div_factor", div_factor)
    return piecewise_interpolate_schedule(
        "linear",
        peak / div,
        {
            int(_real("pct_start", pct_start) * steps): div,
            int(_real("pct_final", pct_final) * steps): 1.0 / div,
            steps: 1.0 / _real("final_div_factor", final_div_factor),
        },
    )


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""One cycle (Smith & Topin, 2017), cosine: up to ``peak_value``, then down (optax).

    Half-cosine from :math:`v_p / d` to :math:`v_p` by ``pct_start * transition_steps``, then
    to :math:`v_p / (d\,d_f)` at ``transition_steps``.

    Raises:
        HyperparameterError: ``transition_steps`` < 1.

    Examples:
        >>> sched = cosine_onecycle_schedule(100, 1.0)
        >>> round(sched(0), 12), sched(30)
        (0.04, 1.0)
    """
    steps = _integer("transition_steps", transition_steps, 1)
    div = _real("div_factor", div_factor)
    return piecewise_interpolate_schedule(
        "cosine",
        _real("peak_value", peak_value) / div,
        {
            int(_real("pct_start", pct_start) * steps): div,
            steps: 1.0 / (div * _real("final_div_factor", final_div_factor)),
        },
    )
