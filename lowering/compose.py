"""Fusing rules: the outputs of one rule substituted into the next, giving one rule.

``compose([a, b])`` is the rule whose update is ``b(a(g))``: every symbol of member ``i`` is
renamed with the prefix ``s<i>_`` so that two members may both own a ``mu`` (and each its own
``count``: a chain's states may be reset apart); ``params`` is shared, since a chain's members
see the same parameters. Per-leaf statistics are per member (each is of its member's incoming
update), renamed like the rest. ``applied(ir)`` folds the parameter update ``p + u`` into a rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy

from optcompile.lowering.trace import RuleIR

__all__ = ["compose", "applied", "PARAMS"]

PARAMS = sympy.Symbol("params", real=True)  # the symbol trace() gives the ``params`` input


def _renamed(ir: RuleIR, prefix: str) -> RuleIR:
    mapping = {
        s: sympy.Symbol(prefix + s.name, real=True)
        for s in (ir.update, *ir.state, *ir.hypers, *ir.counts, *ir.stats)
    }
    return RuleIR(
        name=ir.name,
        update=mapping[ir.update],
        state=tuple(mapping[s] for s in ir.state),
        hypers=tuple(mapping[h] for h in ir.hypers),
        params=ir.params,
        counts=tuple(mapping[c] for c in ir.counts),
        outputs=tuple(out.xreplace(mapping) for out in ir.outputs),
        stats=tuple(mapping[s] for s in ir.stats),
    )


def compose(irs: Sequence[RuleIR], name: str) -> RuleIR:
    """The single rule equal to applying ``irs`` one after another.

    Its state buffers, hyper-parameters (and so its kernel's inputs) are the members' in order.
    """
    members = [_renamed(ir, f"s{i}_") for i, ir in enumerate(irs)]
    update_expr: sympy.Expr = members[0].update
    state_outputs: list[sympy.Expr] = []
    for member in members:
        substitution = {member.update: update_expr}
        new_update, *new_state = (out.xreplace(substitution) for out in member.outputs)
        update_expr = new_update
        state_outputs.extend(new_state)
    params = next((m.params for m in members if m.params is not None), None)
    return RuleIR(
        name=name,
        update=members[0].update,
        state=tuple(s for m in members for s in m.state),
        hypers=tuple(h for m in members for h in m.hypers),
        params=params,
        counts=tuple(c for m in members for c in m.counts),
        outputs=(update_expr, *state_outputs),
        stats=tuple(s for m in members for s in m.stats),
    )


def applied(ir: RuleIR) -> RuleIR:
    r"""The rule whose update output is the new parameter :math:`p' = p + u` instead of :math:`u`.

    Meta-optimizers add the update at once; folded into the last fused kernel, the parameter
    update costs no separate pass over memory, and its derivative is the identity in both.
    """
    params = ir.params if ir.params is not None else PARAMS
    update, *state = ir.outputs
    return RuleIR(
        name=f"{ir.name}+apply_update",
        update=ir.update,
        state=ir.state,
        hypers=ir.hypers,
        params=params,
        counts=ir.counts,
        outputs=(params + update, *state),
        stats=ir.stats,
    )
