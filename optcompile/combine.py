"""Combining transformations (TorchOpt's ``combine``): ``chain``, ``chain_flat``, ``explain``.

:func:`chain` and :class:`ChainedGradientTransformation` are defined in :mod:`optcompile.base`
(where the unit protocol they run on lives) and re-exported here.
"""

from __future__ import annotations

from typing import Any

import optree

from optcompile.base import ChainedGradientTransformation, GradientTransformation, chain, identity
from optcompile.fused import RuleTransformation
from optcompile.members import UpdatesStatistic
from optcompile.rule import explain_ir

__all__ = ["chain", "chain_flat", "ChainedGradientTransformation", "explain"]


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


def explain(tx: GradientTransformation) -> str:
    """How ``tx`` runs: its fused units in order, and each fused kernel's formulas."""
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
            lines.append(f"[{k}] {unit.describe()} (not elementwise; runs on its own)")
    for unit in units:
        if isinstance(unit, RuleTransformation):
            lines += ["", explain_ir(unit.kernel)]
    return "\n".join(lines)
