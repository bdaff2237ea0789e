"""Transforms built from rules: ``from_rule`` and the fused runtime behind every rule transform.

A :class:`RuleTransformation` is a :class:`~optcompile.base.GradientTransformation` made of one
or more rules (*members*) that run as **one** kernel per step for all parameter tensors. ``chain``
concatenates the members of adjacent rule transformations, so a whole chain of elementwise
pieces is one forward and one backward.

Hyper-parameter values are numbers, 0-d tensors (``requires_grad=True`` gives a hypergradient),
schedules ``count -> value``, or an :class:`UpdatesStatistic` (a scalar computed from the
incoming updates, e.g. a global-norm clip coefficient; only on a unit's first member, where the
incoming updates exist as tensors). Every value reaches the kernel as a 0-d tensor, never as a
baked constant, so changing it never rebuilds a kernel.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optree
import torch

from optcompile.base import GradientTransformation
from optcompile.leafstats import leaf_statistic_inputs
from optcompile.lowering.autograd import apply_kernel
from optcompile.lowering.backends import _check_name, get_backend, select_backend
from optcompile.lowering.compose import compose
from optcompile.lowering.kernel import Kernel
from optcompile.lowering.transforms import outside_transforms, transforms_active
from optcompile.rule import Rule
from optcompile.rules.basic import apply_update
from optcompile.settings import current_backend, first_order_active
from optcompile.update import apply_updates

__all__ = ["RuleTransformation", "UpdatesStatistic", "from_rule", "Member"]


@dataclass(frozen=True)
class UpdatesStatistic:
    """A hyper-parameter computed from the incoming update tensors at each step.

    Attributes:
        fn: maps the list of update tensors to a 0-d tensor; it is evaluated without gradient
            (the statistic is a constant to autograd, as in TorchOpt's ``clip_grad_norm``).
        description: shown by :func:`optcompile.explain`.
    """

    fn: Callable[[list[torch.Tensor]], torch.Tensor]
    description: str


@dataclass(frozen=True)
class Member:
    """One rule inside a (possibly fused) transformation, with its hyper-parameter values."""

    rule: Rule
    hypers: tuple[tuple[str, Any], ...]
    moment_requires_grad: bool = False

    def uses_statistic(self) -> bool:
        return any(isinstance(v, UpdatesStatistic) for _, v in self.hypers)

    @functools.cached_property
    def state_type(self) -> type:
        """The rule's state type, with a step ``count`` when the rule or a schedule needs one."""
        needs_count = bool(self.rule.ir.counts) or any(_is_schedule(v) for _, v in self.hypers)
        return self.rule.state_type_for(needs_count)


def _is_schedule(value: Any) -> bool:
    return callable(value) and not isinstance(value, torch.Tensor | UpdatesStatistic)


@functools.lru_cache(maxsize=256)
def _fused_kernel(rules: tuple[Rule, ...]) -> Kernel:
    if len(rules) == 1:
        return rules[0].kernel
    return Kernel(compose([r.ir for r in rules], name="+".join(r.name for r in rules)))


def _kernel_for(tx: RuleTransformation, apply: bool) -> Kernel:
    """The unit's kernel; with ``apply`` its update output is the new parameter ``p + u``.

    Kept on the transformation, so that inside a torch.compile region (where building a kernel
    from sympy cannot be traced) the step only reads it; ``init`` builds both beforehand.
    """
    kernel = tx.kernels.get(apply)
    if kernel is None:
        rules = tuple(m.rule for m in tx.members)
        kernel = tx.kernels[apply] = _fused_kernel(rules + (apply_update,) if apply else rules)
    return kernel


class RuleTransformation(GradientTransformation):
    """A GradientTransformation whose members are rules, run as one fused kernel.

    Standalone, its state is the member's state (one member) or a tuple of member states.
    """

    members: tuple[Member, ...]
    backend: str | None
    kernels: dict[bool, Kernel]  # by ``apply`` (see _kernel_for)

    def __new__(cls, members: Sequence[Member], backend: str | None) -> RuleTransformation:
        members = tuple(members)
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
        return self

    @property
    def kernel(self) -> Kernel:
        """The fused kernel of all members."""
        return _fused_kernel(tuple(m.rule for m in self.members))

    def init_states(self, params: Any) -> list[Any]:
        """One initial state per member (and the kernels a traced step reads, built once)."""
        if not torch.compiler.is_compiling():
            for apply in (False, True):
                _kernel_for(self, apply).prepare_for_tracing()
        return _init_states(self.members, params)

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
        return _step(self, updates, list(states), params, inplace, apply)

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
        _check_name(backend)
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


def _leaves(tree: Any) -> tuple[list, Any]:
    return optree.tree_flatten(tree, none_is_leaf=True)


def _init_states(members: Sequence[Member], params: Any) -> list[Any]:
    leaves, _ = _leaves(params)
    for i, leaf in enumerate(leaves):
        if leaf is not None and not (isinstance(leaf, torch.Tensor) and leaf.is_floating_point()):
            kind = leaf.dtype if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise TypeError(f"params: leaf {i} is {kind}; expected a floating-point tensor")
    states = []
    for member in members:
        rule, hypers = member.rule, dict(member.hypers)
        fields: dict[str, Any] = {}
        for symbol in rule.ir.state:
            fill = rule.init.get(symbol.name, 0.0)
            value = hypers[fill] if isinstance(fill, str) else fill
            if isinstance(value, torch.Tensor):
                value = float(value.detach())
            fields[symbol.name] = [
                None if p is None else _filled_like(p, value, member.moment_requires_grad)
                for p in leaves
            ]
        if "count" in member.state_type._fields:
            # One counter per leaf, kept on the CPU: a leaf whose update is None does not step
            # (as in torch.optim), and grouping leaves by count needs no device sync.
            fields["count"] = [torch.zeros((), dtype=torch.int64) for _ in leaves]
        states.append(member.state_type(**fields))
    return states


def _filled_like(p: torch.Tensor, value: float, requires_grad: bool) -> torch.Tensor:
    """A state buffer for parameter ``p``, filled with ``value``.

    Inside a ``torch.func`` transform ``p`` may be a wrapped tensor (a task's slice under vmap);
    the buffer is then a plain tensor of ``p``'s per-task shape: it is the same for every task
    (the batching rule broadcasts it) and a constant to the transforms; with
    ``moment_requires_grad`` it is a leaf of the outer autograd graph (``requires_grad_`` is
    refused inside transforms, so it is made with the transforms set aside).
    """
    if not transforms_active():
        buffer = torch.full_like(p, value, memory_format=torch.preserve_format).detach()
        return buffer.requires_grad_() if requires_grad else buffer
    # Made outside the transforms: a leaf of the outer autograd graph, whose .grad the outer
    # backward fills (summed over tasks under vmap), as for moments made outside.
    with outside_transforms():
        buffer = torch.full(p.shape, value, dtype=p.dtype, device=p.device)
        return buffer.requires_grad_() if requires_grad else buffer


def _check_state(member: Member, state: Any, n_leaves: int) -> None:
    expected = member.state_type
    if type(state) is not expected:
        raise ValueError(
            f"state: {member.rule.name} expects a {expected.__name__}, got "
            f"{type(state).__name__} (a state from another optimizer, or init() not called?)"
        )
    for name in state._fields:
        if len(getattr(state, name)) != n_leaves:
            raise ValueError(
                f"state: {expected.__name__}.{name} holds {len(getattr(state, name))} entries "
                f"but the updates have {n_leaves} leaves; the state was initialised for other "
                f"params"
            )


def _check_shapes(
    members: Sequence[Member], states: list[Any], leaves: list, active: list[int]
) -> None:
    """Every state buffer of an updated leaf has the update's shape (kernels would broadcast)."""
    for member, state in zip(members, states, strict=True):
        for b in member.rule.ir.state:
            column = getattr(state, b.name)
            for i in active:
                if column[i] is None or column[i].shape != leaves[i].shape:
                    got = None if column[i] is None else tuple(column[i].shape)
                    raise ValueError(
                        f"state: {type(state).__name__}.{b.name}[{i}] has shape {got} but "
                        f"updates leaf {i} has shape {tuple(leaves[i].shape)}; the state was "
                        f"initialised for other params (call init with these params)"
                    )


def _scalar(
    value: Any, count: int, updates: list, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A hyper-parameter's value at this step as a 0-d tensor (kept as given if a tensor)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(()) if value.device == device else value.reshape(()).to(device)
    if isinstance(value, UpdatesStatistic):
        with torch.no_grad():
            return value.fn(updates).to(device=device, dtype=dtype).reshape(())
    if callable(value):
        result = value(torch.tensor(count, dtype=torch.int64))
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            return result.to(device=device, dtype=dtype).reshape(())
        if isinstance(result, numbers.Real) and not isinstance(result, bool):
            return torch.tensor(float(result), dtype=dtype, device=device)  # per step
        raise TypeError(
            f"a schedule must return a number or a 1-element tensor; {value!r} returned "
            f"{type(result).__name__} {getattr(result, 'shape', '')} at count {count}"
        )
    if torch.compiler.is_compiling():  # a constant of the traced graph
        return torch.tensor(float(value), dtype=dtype, device=device)
    return _constant(float(value), device, dtype)


@functools.lru_cache(maxsize=256)
def _constant(value: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed hyper-parameter as a 0-d tensor, made once (never a per-step value).

    Made outside inference mode even when first asked for inside it: the cache outlives the
    call, and an inference tensor could never be saved for a later differentiable step.
    """
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=dtype, device=device)


def _scalar_dtype(leaves: list[torch.Tensor]) -> torch.dtype:
    """float64 scalars for float64 tensors, float32 otherwise (as TorchOpt computes them).

    Half-precision scalars would round beta2 = 0.999 to 1 and divide by zero in Adam's bias
    correction, so bf16/fp16 tensors get float32 scalars, as in ``torch.optim``.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in leaves) else torch.float32


def _validate_updates(leaves: list) -> list[int]:
    """The indices of the leaves that carry an update; reject non-floating ones."""
    active = [i for i, u in enumerate(leaves) if u is not None]
    for i in active:
        if not isinstance(leaves[i], torch.Tensor) or not leaves[i].is_floating_point():
            kind = leaves[i].dtype if isinstance(leaves[i], torch.Tensor) else type(leaves[i])
            raise TypeError(
                f"updates: leaf {i} is {kind}; optcompile transforms need floating-point tensors"
            )
    return active


def _groups_by_count(states: list[Any], active: list[int]) -> dict[tuple[int, ...], list[int]]:
    """Active leaves grouped by their step counts (one group unless some leaves skipped steps)."""
    counters = [s.count for s in states if "count" in s._fields]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in active:
        groups.setdefault(tuple(int(c[i]) for c in counters), []).append(i)
    return groups


def _traced_counts(states: list[Any], active: list[int]) -> dict[tuple[Any, ...], list[int]]:
    """Under torch.compile: one group of all active leaves, counts as traced 0-d tensors.

    Reading counts as Python ints would bake the step number into the graph (a recompile per
    step). Leaves share one count unless some skipped steps (a None update), which a traced
    graph cannot branch on: an assertion inside the graph says so instead of a wrong result.
    """
    key = []
    for state in states:
        if "count" not in state._fields:
            continue
        counts = torch.stack([state.count[i] for i in active])
        torch._assert_async(
            (counts == counts[0]).all(),
            "optcompile: parameter leaves at different step counts (some had None updates) "
            "cannot share a compiled step; run this step outside torch.compile",
        )
        key.append(counts[0])
    return {tuple(key): list(active)}


def _count_scalar(count: int | torch.Tensor, dtype: torch.dtype, device: torch.device) -> Any:
    """The 1-based step as a 0-d tensor (``count`` is the number of steps taken so far)."""
    if isinstance(count, torch.Tensor):
        return (count + 1).to(device=device, dtype=dtype)
    return torch.tensor(float(count + 1), dtype=dtype, device=device)


def _step(
    tx: RuleTransformation,
    updates: Any,
    states: list[Any],
    params: Any,
    inplace: bool,
    apply: bool = False,
) -> tuple[Any, list[Any]]:
    """One step of a fused unit: validate, group leaves by step count, run the kernel, rebuild.

    Returns the new updates (or, with ``apply``, the new parameters) and the new member states.
    """
    members = tx.members
    if len(states) != len(members):
        raise ValueError(f"state: expected {len(members)} member states, got {len(states)}")
    leaves, spec = _leaves(updates)
    for member, state in zip(members, states, strict=True):
        _check_state(member, state, len(leaves))
    active = _validate_updates(leaves)
    _check_shapes(members, states, leaves, active)
    if apply and params is None:
        raise ValueError("params: applying the update needs the parameters; pass params=")
    if not active:
        return (params if apply else updates), states
    requested = tx.backend if tx.backend is not None else current_backend()
    differentiable = not inplace and not first_order_active()
    # The native kernels compute Adam's update only, and a first-order step needs p + u to stay
    # differentiable in p (the identity path) while u is not: then the addition runs on its own.
    fused_apply = apply and differentiable and requested != "native"
    kernel = _kernel_for(tx, fused_apply)
    p_leaves = _param_leaves(kernel, params, leaves)
    device = leaves[active[0]].device
    all_updates = [leaves[i] for i in active]
    elements = sum(u.numel() for u in all_updates)
    compiling = torch.compiler.is_compiling()
    # Inside a torch.compile region the step is traced into the caller's graph (see
    # lowering.autograd.apply_kernel): no backend of its own, no per-step Python decisions.
    backend = (
        get_backend("eager") if compiling else select_backend(requested, kernel, device, elements)
    )
    dtype = _scalar_dtype(all_updates)
    # Statistics of the incoming updates (a clip coefficient) are over all leaves, once.
    hypers = [
        [v if not isinstance(v, UpdatesStatistic) else _scalar(v, 0, all_updates, device, dtype)
         for _, v in member.hypers]
        for member in members
    ]  # fmt: skip
    new_leaves = list(leaves)
    columns = [
        list(getattr(state, b.name))
        for member, state in zip(members, states, strict=True)
        for b in member.rule.ir.state
    ]
    groups = _traced_counts(states, active) if compiling else _groups_by_count(states, active)
    for count_key, group in groups.items():
        counts = iter(count_key)
        member_counts = [next(counts) if "count" in s._fields else 0 for s in states]
        tensor_lists = [[leaves[i] for i in group], *([c[i] for i in group] for c in columns)]
        if p_leaves is not None:
            tensor_lists.append([p_leaves[i] for i in group])
        # Per-leaf statistics (norms per tensor), broadcast views after params (see leafstats).
        tensor_lists += leaf_statistic_inputs(members, tensor_lists[0], params, group)
        scalars = [
            _scalar(v, count, tensor_lists[0], device, dtype)
            for values, count in zip(hypers, member_counts, strict=True)
            for v in values
        ]
        # Each member that reads count gets its own (states of a chain may be reset apart).
        scalars += [
            _count_scalar(count, dtype, device)
            for member, count in zip(members, member_counts, strict=True)
            if member.rule.ir.counts
        ]
        outputs = apply_kernel(
            kernel, backend, tensor_lists, scalars, differentiable=differentiable
        )
        for j, i in enumerate(group):
            new_leaves[i] = outputs[0][j]
            for column, output in zip(columns, outputs[1:], strict=True):
                column[i] = output[j]
    if fused_apply:  # leaves without an update keep their parameter
        assert p_leaves is not None
        pairs = zip(p_leaves, leaves, new_leaves, strict=True)
        new_leaves = [p if u is None else new for p, u, new in pairs]
    result = optree.tree_unflatten(spec, new_leaves)
    if apply and not fused_apply:
        result = apply_updates(params, result, inplace=inplace)
    return result, _next_states(members, states, columns, leaves)


def _param_leaves(kernel: Kernel, params: Any, updates_leaves: list) -> list | None:
    """The parameter leaves when the kernel reads them (None otherwise), checked against updates."""
    if kernel.ir.params is None:
        return None
    if params is None:
        raise ValueError(
            f"{kernel.name} reads the parameters: pass params= to update() "
            f"(e.g. tx.update(grads, state, params=params))"
        )
    p_leaves, _ = _leaves(params)
    n_leaves = len(updates_leaves)
    if len(p_leaves) != n_leaves:
        raise ValueError(f"params: {len(p_leaves)} tensors, but the updates have {n_leaves}")
    for i, (p, u) in enumerate(zip(p_leaves, updates_leaves, strict=True)):
        if u is not None and (not isinstance(p, torch.Tensor) or p.shape != u.shape):
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(
                f"params: leaf {i} has shape {shape} but its update has {tuple(u.shape)}"
            )
    return p_leaves


def _next_states(
    members: Sequence[Member], states: list[Any], columns: list[list[Any]], leaves: list
) -> list[Any]:
    """Member states holding the new buffers; counts advance only where a leaf had an update."""
    new_states, position = [], 0
    for member, state in zip(members, states, strict=True):
        fields = {}
        for b in member.rule.ir.state:
            fields[b.name] = columns[position]
            position += 1
        if "count" in state._fields:
            fields["count"] = [
                c + 1 if leaves[i] is not None else c for i, c in enumerate(state.count)
            ]
        new_states.append(type(state)(**fields) if fields else state)
    return new_states
