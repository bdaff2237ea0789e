"""``chain``: compose transformations; adjacent rule transformations fuse into one kernel.

The state of a chain is the tuple of its members' states (TorchOpt's layout), whatever fusion
happened underneath: fusion changes how a step runs, never what the state looks like.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import optree

from optcompile.base import GradientTransformation, identity
from optcompile.fused import RuleTransformation, UpdatesStatistic
from optcompile.update import apply_updates

__all__ = ["chain", "chain_flat", "ChainedGradientTransformation", "explain"]


class ChainedGradientTransformation(GradientTransformation):
    """A chain of transformations; ``transformations`` are its members.

    Runs as *units*: each maximal run of adjacent :class:`RuleTransformation` members (looking
    through nested chains) is one fused kernel; any other member (a global-norm clip, a hook)
    runs on its own between them. The state is a tuple with one entry per member; a member that
    is itself an ``opaque`` chain (what the aliases return, like TorchOpt's ``chain_flat``)
    keeps its own tuple inside it.
    """

    transformations: tuple[GradientTransformation, ...]

    def __new__(
        cls, *transformations: GradientTransformation, opaque: bool = False
    ) -> ChainedGradientTransformation:
        members = _flatten(transformations)
        layout = _layout(members, iter(range(1 << 30)))
        units = _units(_primitives(members))
        n_states = sum(size for _, size in units)

        def init(params: Any) -> tuple:
            states: list[Any] = []
            for unit, _ in units:
                if isinstance(unit, RuleTransformation):
                    states.extend(unit.init_states(params))
                else:
                    states.append(unit.init(params))
            return _nest(layout, states)

        def run(
            updates: Any, state: Any, params: Any, inplace: bool, apply: bool
        ) -> tuple[Any, tuple]:
            flat = _unnest(layout, state, n_states)
            new_states: list[Any] = []
            position = 0
            for k, (unit, size) in enumerate(units):
                unit_states = flat[position : position + size]
                position += size
                last = k == len(units) - 1
                if isinstance(unit, RuleTransformation):
                    updates, unit_new = unit.update_states(
                        updates, unit_states, params=params, inplace=inplace, apply=apply and last
                    )
                    new_states.extend(unit_new)
                    continue
                updates, single = unit.update(
                    updates, unit_states[0], params=params, inplace=inplace
                )
                new_states.append(single)
                if apply and last:
                    updates = apply_updates(params, updates, inplace=inplace)
            return updates, _nest(layout, new_states)

        def update(
            updates: Any, state: Any, *, params: Any = None, inplace: bool = True
        ) -> tuple[Any, tuple]:
            return run(updates, state, params, inplace, apply=False)

        self = super().__new__(cls, init, update)
        self._run = run
        self.transformations = members
        self.opaque = opaque
        self.units = tuple(unit for unit, _ in units)
        return self

    def update_and_apply(
        self, updates: Any, state: Any, *, params: Any, inplace: bool = True
    ) -> tuple[Any, tuple]:
        """``(params + updates, new_state)``: the last fused unit also adds the update."""
        if params is None:
            raise ValueError("params: applying the update needs the parameters; pass params=")
        return self._run(updates, state, params, inplace, apply=True)

    def __repr__(self) -> str:
        return f"ChainedGradientTransformation({', '.join(map(_describe, self.transformations))})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChainedGradientTransformation):
            return self.transformations == other.transformations
        return False

    def __hash__(self) -> int:
        return hash(self.transformations)

    def __reduce__(self) -> tuple:
        return (_rebuild_chain, (self.transformations, self.opaque))


def _rebuild_chain(
    transformations: tuple[GradientTransformation, ...], opaque: bool
) -> ChainedGradientTransformation:
    return ChainedGradientTransformation(*transformations, opaque=opaque)


def _flatten(transformations: Sequence[GradientTransformation]) -> tuple:
    """Members of a chain: plain nested chains are spliced in, opaque ones stay one member."""
    members: list[GradientTransformation] = []
    for i, tx in enumerate(transformations):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(
                f"chain: argument {i} is {type(tx).__name__}, expected a GradientTransformation"
            )
        if isinstance(tx, ChainedGradientTransformation) and not tx.opaque:
            members.extend(tx.transformations)
        elif tx is not identity():
            members.append(tx)
    return tuple(members)


def _primitives(members: Sequence[GradientTransformation]) -> list[GradientTransformation]:
    """Every non-chain transformation, looking through nested chains, in order."""
    result: list[GradientTransformation] = []
    for tx in members:
        if isinstance(tx, ChainedGradientTransformation):
            result.extend(_primitives(tx.transformations))
        else:
            result.append(tx)
    return result


def _state_count(tx: GradientTransformation) -> int:
    return len(tx.members) if isinstance(tx, RuleTransformation) else 1


def _layout(members: Sequence[GradientTransformation], counter: Iterator[int]) -> tuple:
    """The nesting of a chain's state: a tuple of flat-state indices and sub-tuples."""
    layout: list[Any] = []
    for tx in members:
        if isinstance(tx, ChainedGradientTransformation):
            layout.append(_layout(tx.transformations, counter))
        elif isinstance(tx, RuleTransformation) and len(tx.members) > 1:
            layout.append(tuple(next(counter) for _ in tx.members))
        else:
            layout.append(next(counter))
    return tuple(layout)


def _nest(layout: tuple, flat: Sequence[Any]) -> tuple:
    return tuple(_nest(item, flat) if isinstance(item, tuple) else flat[item] for item in layout)


def _unnest(layout: tuple, state: Any, n_states: int) -> list[Any]:
    """The flat list of member states in ``state``, checked against ``layout``."""
    flat: list[Any] = [None] * n_states

    def visit(item: tuple, value: Any, where: str) -> None:
        if not isinstance(value, tuple) or hasattr(value, "_fields") or len(value) != len(item):
            got = (
                f"a {type(value).__name__}"
                if not isinstance(value, tuple) or hasattr(value, "_fields")
                else f"a tuple of {len(value)}"
            )
            raise ValueError(
                f"state{where}: expected a tuple of {len(item)} member states (what init() "
                f"returned), got {got}. Call init(params) first, and pass this optimizer's "
                f"whole state, not a member's or another optimizer's"
            )
        for k, (sub, sub_value) in enumerate(zip(item, value, strict=True)):
            if isinstance(sub, tuple):
                visit(sub, sub_value, f"{where}[{k}]")
            else:
                flat[sub] = sub_value

    visit(layout, state, "")
    return flat


def _units(members: Sequence[GradientTransformation]) -> list[tuple[GradientTransformation, int]]:
    """Group members into (unit, number of member states); adjacent rule members fuse."""
    units: list[tuple[GradientTransformation, int]] = []
    for tx in members:
        if isinstance(tx, RuleTransformation) and units and _fusable(units[-1][0], tx):
            previous, size = units[-1]
            assert isinstance(previous, RuleTransformation)
            fused = RuleTransformation(previous.members + tx.members, previous.backend)
            units[-1] = (fused, size + len(tx.members))
        else:
            units.append((tx, _state_count(tx)))
    return units


def _fusable(previous: GradientTransformation, nxt: RuleTransformation) -> bool:
    # A statistic of the incoming updates (a clip coefficient, or a per-leaf norm declared by
    # the rule) needs them as real tensors, so a member that uses one starts a new unit.
    return (
        isinstance(previous, RuleTransformation)
        and previous.backend == nxt.backend
        and not nxt.members[0].uses_statistic()
        and not nxt.members[0].rule.stats
    )


def chain(*transformations: GradientTransformation) -> GradientTransformation:
    """Apply ``transformations`` one after another, fusing adjacent rules into one kernel.

    ``chain()`` is the identity, and a chain of one transformation is that transformation.

    Examples:
        >>> import optcompile
        >>> tx = optcompile.chain(optcompile.clip.clip_grad_norm(1.0), optcompile.sgd(lr=0.1))
    """
    members = _flatten(transformations)
    if not members:
        return identity()
    if len(members) == 1:
        return members[0]
    return ChainedGradientTransformation(*members)


def chain_flat(*transformations: GradientTransformation) -> GradientTransformation:
    """``chain(*transformations)`` run on the flat list of the params' leaves (``chain.flat``).

    The inner chain sees (and its state holds) lists with one entry per leaf, ``None`` leaves
    included; the updates come back in the params' structure. ``chain_flat()`` is the identity.
    """
    if not transformations:
        return identity()
    inner = chain(*transformations)

    def init(params: Any) -> Any:
        return inner.init(optree.tree_leaves(params, none_is_leaf=True))

    def update(
        updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]:
        flat_updates, spec = optree.tree_flatten(updates, none_is_leaf=True)
        flat_params = None if params is None else optree.tree_leaves(params, none_is_leaf=True)
        flat_updates, state = inner.update(flat_updates, state, params=flat_params, inplace=inplace)
        return optree.tree_unflatten(spec, list(flat_updates)), state

    return GradientTransformation(init, update)


chain.flat = chain_flat  # type: ignore[attr-defined]


def _describe(tx: GradientTransformation) -> str:
    if isinstance(tx, RuleTransformation):
        return " + ".join(m.rule.name for m in tx.members)
    return getattr(tx, "name", None) or getattr(tx.update, "__qualname__", "transform")


def explain(tx: GradientTransformation) -> str:
    """How ``tx`` runs: its fused units in order, and each fused kernel's formulas."""
    from optcompile.rule import explain_ir

    units = tx.units if isinstance(tx, ChainedGradientTransformation) else (tx,)
    lines = [f"{len(units)} unit(s) per step:"]
    for k, unit in enumerate(units):
        if isinstance(unit, RuleTransformation):
            names = [m.rule.name for m in unit.members]
            lines.append(f"[{k}] one fused kernel of {len(names)} rule(s): {' -> '.join(names)}")
            lines += [
                f"    {m.rule.name}.{name} = {value.description}, computed from the incoming "
                f"updates before the kernel"
                for m in unit.members
                for name, value in m.hypers
                if isinstance(value, UpdatesStatistic)
            ]
            lines += [
                f"    {m.rule.name}.{name} = {stat.description} per parameter tensor, computed "
                f"before the kernel and broadcast to the tensor's shape"
                for m in unit.members
                for name, stat in m.rule.stats.items()
            ]
        else:
            lines.append(f"[{k}] {_describe(unit)} (not elementwise; runs on its own)")
    for unit in units:
        if isinstance(unit, RuleTransformation):
            lines += ["", explain_ir(unit.kernel)]
    return "\n".join(lines)
