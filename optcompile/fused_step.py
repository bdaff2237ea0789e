"""The per-step runtime of rule transformations: initial states, step plans, and the step.

A step of a fused unit does the same Python work every time for the same inputs: check the
tree of updates, pick the leaves that carry an update, choose the kernel (with the parameter
update folded in or not) and turn constant hyper-parameters into 0-d tensors.
:class:`StepPlan` holds those decisions; it is built and validated once per (tree structure,
leaf shapes, dtypes and devices, options) and kept on the transformation, so a step that finds
its plan only checks what may change from call to call (the state's buffers, the step counts),
resolves the backend (settings may change between steps; resolving is a few lookups) and runs
the kernel.

Inside a ``torch.compile`` region the plan is built while tracing and never cached: Dynamo
traces the decisions once and guards on what they read.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optree
import torch

from optcompile.leafstats import leaf_statistic_inputs
from optcompile.lowering.autograd import apply_kernel
from optcompile.lowering.backends import Backend, get_backend, resolve_backend
from optcompile.lowering.compose import applied, compose
from optcompile.lowering.kernel import Kernel
from optcompile.lowering.transforms import outside_transforms, transforms_active
from optcompile.members import Member, UpdatesStatistic
from optcompile.settings import current_backend, first_order_active
from optcompile.update import apply_updates

if TYPE_CHECKING:
    from optcompile.fused import RuleTransformation

__all__ = ["StepPlan", "init_states", "step", "unit_kernel"]

_MAX_PLANS = 64  # per transformation; a long-running process may see many shapes (e.g. NAS)


@functools.lru_cache(maxsize=256)
def _fused_kernel(rules: tuple[Any, ...], apply: bool) -> Kernel:
    """The kernel of ``rules`` one after another; with ``apply`` it returns ``params + update``."""
    if len(rules) == 1 and not apply:
        return rules[0].kernel  # type: ignore[no-any-return]
    name = "+".join(r.name for r in rules)
    ir = compose([r.ir for r in rules], name=name) if len(rules) > 1 else rules[0].ir
    return Kernel(applied(ir) if apply else ir)


def unit_kernel(members: Sequence[Member], apply: bool) -> Kernel:
    """The fused kernel of ``members`` (see :func:`_fused_kernel`)."""
    return _fused_kernel(tuple(m.rule for m in members), apply)


def init_states(members: Sequence[Member], params: Any) -> list[Any]:
    """One initial state per member for the parameter tree ``params``.

    Every leaf of a member's count starts as the same 0-d tensor (and the step advances them
    together), so grouping leaves by count costs one comparison per leaf.
    """
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
            zero = torch.zeros((), dtype=torch.int64)
            fields["count"] = [zero for _ in leaves]
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
    if torch.compiler.is_compiling():
        # Traced (inside @optcompile, maybe under torch.func.grad of a whole inner loop):
        # Dynamo handles the transforms itself; a buffer is a constant of the graph.
        return torch.full(p.shape, value, dtype=p.dtype, device=p.device)
    if not transforms_active():
        buffer = torch.full_like(p, value, memory_format=torch.preserve_format).detach()
        return buffer.requires_grad_() if requires_grad else buffer
    # Made outside the transforms: a leaf of the outer autograd graph, whose .grad the outer
    # backward fills (summed over tasks under vmap), as for moments made outside.
    with outside_transforms():
        buffer = torch.full(p.shape, value, dtype=p.dtype, device=p.device)
        return buffer.requires_grad_() if requires_grad else buffer


@dataclass(frozen=True)
class StepPlan:
    """The decisions of one step, valid for every call with the same plan key.

    Attributes:
        active: the indices of the leaves that carry an update.
        elements: how many elements they hold together (``auto`` runs small steps eagerly).
        plain: the unit's kernel.
        with_apply: the kernel whose first output is ``params + update``, when the caller
            applies the update and the step is differentiable (else None).
        differentiable: the step is recorded for autograd (not in place, not first order).
        device: the device of the updates.
        dtype: the dtype of the scalars (float64 with float64 tensors, float32 otherwise).
        hypers: per member, each hyper-parameter's value, constants already as 0-d tensors.
    """

    active: tuple[int, ...]
    elements: int
    plain: Kernel
    with_apply: Kernel | None
    differentiable: bool
    device: torch.device
    dtype: torch.dtype
    hypers: tuple[tuple[Any, ...], ...]
    # kernel_on's answer per backend name, found on the first step on that backend.
    chosen: dict[str, Kernel] = field(default_factory=dict, compare=False, repr=False)

    def kernel_on(self, backend: Backend) -> Kernel:
        """The kernel to run on ``backend``: the update folded in where the backend runs it.

        A first-order step needs ``p + u`` differentiable in ``p`` while ``u`` is not, and a
        backend may run the plain kernel but not the one with the addition (the native Adam):
        then the addition runs on its own. Asked once per backend, not per step.
        """
        kernel = self.chosen.get(backend.name)
        if kernel is None:
            supported = (
                self.with_apply is not None
                and backend.supports(self.with_apply, self.device) is None
            )
            kernel = self.chosen[backend.name] = self.with_apply if supported else self.plain
        return kernel


def step(
    tx: RuleTransformation,
    updates: Any,
    states: list[Any],
    params: Any,
    inplace: bool,
    apply: bool = False,
) -> tuple[Any, list[Any]]:
    """One step of a fused unit: find (or build) the plan, group leaves by count, run, rebuild.

    Returns the new updates (or, with ``apply``, the new parameters) and the new member states.
    """
    members = tx.members
    if len(states) != len(members):
        raise ValueError(f"state: expected {len(members)} member states, got {len(states)}")
    leaves, spec = _leaves(updates)
    for member, state in zip(members, states, strict=True):
        _check_state(member, state, len(leaves))
    if apply and params is None:
        raise ValueError("params: applying the update needs the parameters; pass params=")
    compiling = torch.compiler.is_compiling()
    plan = _plan(tx, leaves, spec, params, inplace, apply, compiling)
    if plan is None:  # no leaf carries an update
        return (params if apply else updates), states
    active = plan.active
    _check_shapes(members, states, leaves, active)
    if compiling:
        # Traced into the caller's graph (see lowering.autograd.apply_kernel): no backend of
        # its own, no per-step Python decisions.
        backend = get_backend("eager")
        kernel = plan.with_apply or plan.plain
    else:
        requested = tx.backend if tx.backend is not None else current_backend()
        backend = resolve_backend(requested, plan.plain, plan.device, plan.elements)
        kernel = plan.kernel_on(backend)
    fused_apply = kernel is not plan.plain
    p_leaves = _param_leaves(kernel, params, leaves)
    all_updates = [leaves[i] for i in active]
    device, dtype = plan.device, plan.dtype
    # Statistics of the incoming updates (a clip coefficient) are over all leaves, once.
    hypers = [
        [v if not isinstance(v, UpdatesStatistic) else _scalar(v, 0, all_updates, device, dtype)
         for v in values]
        for values in plan.hypers
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
            kernel, backend, tensor_lists, scalars, differentiable=plan.differentiable
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


def _plan(
    tx: RuleTransformation,
    leaves: list,
    spec: Any,
    params: Any,
    inplace: bool,
    apply: bool,
    compiling: bool,
) -> StepPlan | None:
    """The cached plan for these inputs, built (and validated) on first sight."""
    differentiable = not inplace and not first_order_active()
    if compiling:
        return _build_plan(tx, leaves, differentiable, apply, compiling=True)
    key = (spec, tuple(_describe_leaf(u) for u in leaves), differentiable, apply)
    plans = tx.plans
    plan = plans.get(key, _MISSING)
    if plan is _MISSING:
        plan = _build_plan(tx, leaves, differentiable, apply, compiling=False)
        if len(plans) >= _MAX_PLANS:
            plans.clear()
        plans[key] = plan
    return plan  # type: ignore[return-value]


_MISSING = object()


def _describe_leaf(leaf: Any) -> Any:
    """What a plan depends on of one leaf (its kind is validated when the plan is built)."""
    if isinstance(leaf, torch.Tensor):
        return (leaf.shape, leaf.dtype, leaf.device)
    return type(leaf)


def _build_plan(
    tx: RuleTransformation,
    leaves: list,
    differentiable: bool,
    apply: bool,
    compiling: bool,
) -> StepPlan | None:
    active = _validate_updates(leaves)
    if not active:
        return None
    all_updates = [leaves[i] for i in active]
    device = all_updates[0].device
    dtype = _scalar_dtype(all_updates)
    hypers = tuple(
        tuple(_planned_value(v, device, dtype, compiling) for _, v in member.hypers)
        for member in tx.members
    )
    return StepPlan(
        active=tuple(active),
        elements=sum(u.numel() for u in all_updates),
        plain=tx.kernel_for(apply=False),
        with_apply=tx.kernel_for(apply=True) if apply and differentiable else None,
        differentiable=differentiable,
        device=device,
        dtype=dtype,
        hypers=hypers,
    )


def _planned_value(value: Any, device: torch.device, dtype: torch.dtype, compiling: bool) -> Any:
    """A constant number becomes its 0-d tensor once; other values are resolved per step."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if compiling:  # a constant of the traced graph
            return torch.tensor(float(value), dtype=dtype, device=device)
        return _constant(float(value), device, dtype)
    return value


def _leaves(tree: Any) -> tuple[list, Any]:
    return optree.tree_flatten(tree, none_is_leaf=True)


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
    members: Sequence[Member], states: list[Any], leaves: list, active: Sequence[int]
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
        if value.dim() == 0 and value.device == device:
            return value
        return value.reshape(()) if value.device == device else value.reshape(()).to(device)
    if isinstance(value, UpdatesStatistic):
        with torch.no_grad():
            return value.fn(updates).to(device=device, dtype=dtype).reshape(())
    result = value(torch.tensor(count, dtype=torch.int64))  # a schedule
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        return result.to(device=device, dtype=dtype).reshape(())
    if isinstance(result, numbers.Real) and not isinstance(result, bool):
        return torch.tensor(float(result), dtype=dtype, device=device)  # per step
    raise TypeError(
        f"a schedule must return a number or a 1-element tensor; {value!r} returned "
        f"{type(result).__name__} {getattr(result, 'shape', '')} at count {count}"
    )


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


def _groups_by_count(
    states: list[Any], active: Sequence[int]
) -> dict[tuple[int, ...], list[int]]:
    """Active leaves grouped by their step counts (one group unless some leaves skipped steps).

    Leaves that share one count tensor (what :func:`init_states` and :func:`_next_states` make)
    are read once.
    """
    counters = [s.count for s in states if "count" in s._fields]
    if not counters:
        return {(): list(active)}
    first = [c[active[0]] for c in counters]
    if all(c[i] is f for c, f in zip(counters, first, strict=True) for i in active):
        return {tuple(int(f) for f in first): list(active)}
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in active:
        groups.setdefault(tuple(int(c[i]) for c in counters), []).append(i)
    return groups


def _traced_counts(states: list[Any], active: Sequence[int]) -> dict[tuple[Any, ...], list[int]]:
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
    return _recent_step(count + 1, device, dtype)


@functools.lru_cache(maxsize=32)
def _recent_step(step: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The step as a 0-d tensor, kept for a few steps: an inner loop of K <= 32 steps, restarted
    every outer iteration, makes each one once; a long run's ever-new steps stay bounded."""
    with torch.inference_mode(False):
        return torch.tensor(float(step), dtype=dtype, device=device)


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
    """Member states holding the new buffers; counts advance only where a leaf had an update.

    Leaves that shared a count tensor share the advanced one (one addition, not one per leaf).
    """
    new_states, position = [], 0
    for member, state in zip(members, states, strict=True):
        fields = {}
        for b in member.rule.ir.state:
            fields[b.name] = columns[position]
            position += 1
        if "count" in state._fields:
            fields["count"] = _advanced_counts(state.count, leaves)
        new_states.append(type(state)(**fields) if fields else state)
    return new_states


def _advanced_counts(counts: Sequence[torch.Tensor], leaves: list) -> list[torch.Tensor]:
    """Each count plus one where its leaf had an update; a shared count is advanced once."""
    if torch.compiler.is_compiling():
        # The updated leaves share one count (_traced_counts asserts it): one addition, shared
        # like init's zeros, so the next call's inputs alias alike and Dynamo keeps one graph.
        first = next((c for c, u in zip(counts, leaves, strict=True) if u is not None), None)
        shared = None if first is None else first + 1
        return [c if u is None else shared for c, u in zip(counts, leaves, strict=True)]
    advanced: dict[int, torch.Tensor] = {}
    result = []
    for c, u in zip(counts, leaves, strict=True):
        if u is None:
            result.append(c)
            continue
        new = advanced.get(id(c))
        if new is None:
            new = advanced[id(c)] = c + 1
        result.append(new)
    return result
