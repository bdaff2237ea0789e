"""Transforms built from rules: ``from_rule`` and :class:`RuleTransformation`.

A :class:`RuleTransformation` is a :class:`~optcompile.base.GradientTransformation` made of one
or more rules (*members*) that run as **one** kernel per step for all parameter tensors. ``chain``
concatenates the members of adjacent rule transformations, so a whole chain of elementwise
pieces is one forward and one backward.

Hyper-parameter values are numbers, 0-d tensors (``requires_grad=True`` gives a hypergradient),
schedules ``count -> value``, or an :class:`UpdatesStatistic` (a scalar computed from the
incoming updates, e.g. a global-norm clip coefficient; only on a unit's first member, where the
incoming updates exist as tensors). Every value reaches the kernel as a 0-d tensor, never as a
baked constant, so changing it never rebuilds a kernel.

This module is what users see; the per-step runtime (plans, counts, the kernel call) is
:mod:`optcompile.fused_step`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from optcompile import fused_step
from optcompile.base import GradientTransformation
from optcompile.errors import LoweringError
from optcompile.lowering.backends import check_backend_name
from optcompile.lowering.kernel import Kernel
from optcompile.members import Member, UpdatesStatistic

if TYPE_CHECKING:
    from optcompile.rule import Rule

__all__ = ["RuleTransformation", "UpdatesStatistic", "from_rule", "Member"]


class RuleTransformation(GradientTransformation):
    """A GradientTransformation whose members are rules, run as one fused kernel.

    Standalone, its state is the member's state (one member) or a tuple of member states.
    """

    members: tuple[Member, ...]
    backend: str | None
    kernels: dict[bool, Kernel]  # by ``apply`` (see kernel_for)
    plans: dict[Any, Any]  # the step plans of fused_step, by their key

    def __new__(cls, members: Sequence[Member], backend: str | None) -> RuleTransformation:
        members = tuple(members)
        for member in members[1:]:  # see leafstats: statistics are of the unit's incoming updates
            if member.rule.stats:
                raise ValueError(
                    f"{member.rule.name} computes per-leaf statistics of its incoming updates, "
                    f"so it must start a fused unit; chain it instead of fusing it after "
                    f"{members[0].rule.name}"
                )
        single = len(members) == 1

        def init(params: Any) -> Any:
            states = self.init_states(params)
            return states[0] if single else tuple(states)

        def update(
            updates: Any, state: Any, *, params: Any = None, inplace: bool = True
        ) -> tuple[Any, Any]:
            states = [state] if single else _as_tuple(state, len(members))
            new_updates, new_states = self.update_states(
                updates, states, params=params, inplace=inplace
            )
            return new_updates, (new_states[0] if single else tuple(new_states))

        self = super().__new__(cls, init, update)
        self.members = members
        self.backend = backend
        self.kernels = {}
        self.plans = {}
        return self

    @property
    def kernel(self) -> Kernel:
        """The fused kernel of all members."""
        return self.kernel_for(apply=False)

    def kernel_for(self, apply: bool) -> Kernel:
        """The unit's kernel; with ``apply`` its update output is the new parameter ``p + u``.

        Kept on the transformation, so that inside a torch.compile region (where building a
        kernel from sympy cannot be traced) the step only reads it; ``init`` builds both.
        """
        kernel = self.kernels.get(apply)
        if kernel is None:
            if torch.compiler.is_compiling():
                raise LoweringError(
                    f"{self!r} was first used inside a compiled function: its kernels are "
                    f"built from sympy, which torch.compile cannot trace. Call init() once "
                    f"outside the compiled function first (e.g. state = tx.init(params))"
                )
            kernel = self.kernels[apply] = fused_step.unit_kernel(self.members, apply)
        return kernel

    def describe(self) -> str:
        return " + ".join(m.rule.name for m in self.members)

    def state_count(self) -> int:
        return len(self.members)

    def fused_with(self, following: GradientTransformation) -> GradientTransformation | None:
        """One unit of both when ``following`` is a rule transformation on the same backend.

        A statistic of the incoming updates (a clip coefficient, or a per-leaf norm declared by
        the rule) needs them as real tensors, so a member that uses one starts a new unit.
        """
        if (
            isinstance(following, RuleTransformation)
            and following.backend == self.backend
            and not following.members[0].uses_statistic()
            and not following.members[0].rule.stats
        ):
            return RuleTransformation(self.members + following.members, self.backend)
        return None

    def init_states(self, params: Any) -> list[Any]:
        """One initial state per member (and the kernels a traced step reads, built once)."""
        if not torch.compiler.is_compiling():
            for apply in (False, True):
                self.kernel_for(apply).prepare_for_tracing()
        return fused_step.init_states(self.members, params)

    def update_states(
        self,
        updates: Any,
        states: Sequence[Any],
        *,
        params: Any = None,
        inplace: bool = True,
        apply: bool = False,
    ) -> tuple[Any, list[Any]]:
        """Run one fused step; ``states`` holds one state per member.

        With ``apply=True`` it returns the new parameters ``params + updates`` instead of the
        updates, computed inside the same kernel where the backend allows.
        """
        return fused_step.step(self, updates, list(states), params, inplace, apply)

    def update_and_apply(
        self, updates: Any, state: Any, *, params: Any, inplace: bool = True
    ) -> tuple[Any, Any]:
        """``(params + update, new_state)`` in one fused pass (see ``apply_transform``)."""
        single = len(self.members) == 1
        states = [state] if single else _as_tuple(state, len(self.members))
        new_params, new_states = self.update_states(
            updates, states, params=params, inplace=inplace, apply=True
        )
        return new_params, (new_states[0] if single else tuple(new_states))

    def __repr__(self) -> str:
        return f"RuleTransformation({' -> '.join(m.rule.name for m in self.members)})"

    def __reduce__(self) -> tuple:
        return (RuleTransformation, (self.members, self.backend))


def _as_tuple(state: Any, n: int) -> tuple:
    if not isinstance(state, tuple) or len(state) != n or _is_namedtuple(state):
        raise ValueError(
            f"state: expected a tuple of {n} member states (what init() returned), got "
            f"{type(state).__name__}; call init(params) first"
        )
    return state


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def from_rule(
    rule: Rule,
    *,
    backend: str | None = None,
    moment_requires_grad: bool = False,
    **hypers: Any,
) -> RuleTransformation:
    """The transformation that applies ``rule`` with these hyper-parameter values.

    Args:
        rule: the declared rule.
        backend: ``"auto"``, ``"inductor"``, ``"native"``, ``"eager"`` or None (process default).
        moment_requires_grad: create the state buffers with ``requires_grad=True`` so that
            meta-gradients also reach the initial moments.
        **hypers: values for the rule's hyper-parameters (others keep their defaults).

    Raises:
        TypeError: an unknown hyper-parameter or a value of the wrong type.
        HyperparameterError: a value outside its declared domain.
    """
    if backend is not None:
        check_backend_name(backend)
    values: dict[str, Any] = dict(rule.defaults)
    for name, value in hypers.items():
        if name not in rule.defaults:
            known = ", ".join(rule.defaults) or "none"
            raise TypeError(
                f"{rule.name}() got an unexpected hyper-parameter {name!r}; its hyper-parameters "
                f"are: {known}"
            )
        values[name] = _check_value(rule, name, value)
    member = Member(rule, tuple(values.items()), bool(moment_requires_grad))
    return RuleTransformation([member], backend)


def _check_value(rule: Rule, name: str, value: Any) -> Any:
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real | torch.Tensor | UpdatesStatistic) or callable(value)
    ):
        raise TypeError(
            f"{rule.name}: {name}={value!r} must be a real number, a 0-d tensor or a schedule "
            f"(a callable of the step count)"
        )
    if isinstance(value, torch.Tensor) and (value.numel() != 1 or not value.is_floating_point()):
        raise TypeError(
            f"{rule.name}: {name} must be a floating 0-d tensor, got shape "
            f"{tuple(value.shape)} dtype {value.dtype}"
        )
    if name in rule.domains:
        rule.domains[name].validate(name, value)
    return value
