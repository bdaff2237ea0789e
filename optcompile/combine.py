"""``chain``: compose transformations; adjacent rule transformations fuse into one kernel.

The state of a chain is the tuple of its members' states (TorchOpt's layout), whatever fusion
happened underneath: fusion changes how a step runs, never what the state looks like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optcompile.base import GradientTransformation, identity
from optcompile.fused import RuleTransformation

__all__ = ["chain", "ChainedGradientTransformation", "explain"]


class ChainedGradientTransformation(GradientTransformation):
    """A chain of transformations; ``transformations`` are its (flattened) members.

    Runs as *units*: each maximal run of adjacent :class:`RuleTransformation` members is one
    fused kernel; any other member (a global-norm clip, a hook) runs on its own between them.
    """

    transformations: tuple[GradientTransformation, ...]

    def __new__(cls, *transformations: GradientTransformation) -> ChainedGradientTransformation:
        members = _flatten(transformations)
        units = _units(members)

        def init(params: Any) -> tuple:
            states: list[Any] = []
            for unit, _ in units:
                if isinstance(unit, RuleTransformation):
                    states.extend(unit.init_states(params))
                else:
                    states.append(unit.init(params))
            return tuple(states)

        def update(
            updates: Any, state: Any, *, params: Any = None, inplace: bool = True
        ) -> tuple[Any, tuple]:
            if not isinstance(state, tuple) or len(state) != len(members) or hasattr(
                state, "_fields"
            ):
                got = f"{len(state)} states" if isinstance(state, tuple) else type(state).__name__
                raise ValueError(
                    f"state: this chain has {len(members)} members, so its state is a tuple of "
                    f"{len(members)} states; got {got}. Call init(params) first, and pass the "
                    f"state of this optimizer, not another one's"
                )
            new_states: list[Any] = []
            position = 0
            for unit, size in units:
                unit_states = state[position : position + size]
                position += size
                if isinstance(unit, RuleTransformation):
                    updates, unit_new = unit.update_states(
                        updates, unit_states, params=params, inplace=inplace
                    )
                    new_states.extend(unit_new)
                else:
                    updates, single = unit.update(
                        updates, unit_states[0], params=params, inplace=inplace
                    )
                    new_states.append(single)
            return updates, tuple(new_states)

        self = super().__new__(cls, init, update)
        self.transformations = members
        self.units = tuple(unit for unit, _ in units)
        return self

    def __repr__(self) -> str:
        return f"ChainedGradientTransformation({', '.join(map(_describe, self.transformations))})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChainedGradientTransformation):
            return self.transformations == other.transformations
        return False

    def __hash__(self) -> int:
        return hash(self.transformations)

    def __reduce__(self) -> tuple:
        return (ChainedGradientTransformation, self.transformations)


def _flatten(transformations: Sequence[GradientTransformation]) -> tuple:
    members: list[GradientTransformation] = []
    for i, tx in enumerate(transformations):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(
                f"chain: argument {i} is {type(tx).__name__}, expected a GradientTransformation"
            )
        if isinstance(tx, ChainedGradientTransformation):
            members.extend(tx.transformations)
        elif tx is not identity():
            members.append(tx)
    return tuple(members)


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
            size = len(tx.members) if isinstance(tx, RuleTransformation) else 1
            units.append((tx, size))
    return units


def _fusable(previous: GradientTransformation, nxt: RuleTransformation) -> bool:
    # A statistic of the incoming updates (a clip coefficient) needs them as real tensors, so a
    # member that uses one starts a new unit.
    return (
        isinstance(previous, RuleTransformation)
        and previous.backend == nxt.backend
        and not nxt.members[0].uses_statistic()
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
        else:
            lines.append(f"[{k}] {_describe(unit)} (not elementwise; runs on its own)")
    for unit in units:
        if isinstance(unit, RuleTransformation):
            lines += ["", explain_ir(unit.kernel)]
    return "\n".join(lines)
