"""The optimizer model shared by every transform: a pair of pure functions.

An optimizer is a :class:`GradientTransformation` ``(init, update)`` (the Optax model that TorchOpt
uses): ``init(params) -> state`` and ``update(updates, state, *, params=None, inplace=True) ->
(updates, state)``. ``updates`` is the gradient on the way in and the delta to add to the
parameters on the way out (see :func:`optcompile.apply_updates`).

Composition lives here too (:func:`chain`, :class:`ChainedGradientTransformation`, where TorchOpt
keeps it): a chain runs its members as *units* through a small protocol every transformation
has (:meth:`GradientTransformation.state_count`, ``fused_with``, ``init_states``,
``update_states``); a rule transformation overrides it so that adjacent rules fuse into one
kernel. The state of a chain is the tuple of its members' states (TorchOpt's layout), whatever
fusion happened underneath: fusion changes how a step runs, never what the state looks like.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from optcompile.update import apply_updates

__all__ = [
    "EmptyState",
    "UninitializedState",
    "GradientTransformation",
    "ChainedGradientTransformation",
    "chain",
    "identity",
]


class EmptyState(NamedTuple):
    """The state of a stateless transform (scale, clip, hooks, weight decay)."""


class UninitializedState(NamedTuple):
    """The state of an optimizer object before its first ``init``."""


class TransformInitFn(Protocol):
    def __call__(self, params: Any) -> Any: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Any, state: Any, *, params: Any = None, inplace: bool = True
    ) -> tuple[Any, Any]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)`` over pytrees of tensors.

    ``inplace=True`` lets an update overwrite the incoming update and state tensors (fast, not
    differentiable); ``inplace=False`` builds new tensors so meta-gradients flow through them.
    """

    init: TransformInitFn
    update: TransformUpdateFn

    def chain(self, next_transform: GradientTransformation) -> GradientTransformation:
        """Return ``chain(self, next_transform)``."""
        return chain(self, next_transform)

    # The unit protocol of chains. A plain transformation is one unit with one state; a rule
    # transformation holds one state per member rule and fuses with the rules that follow it.

    def describe(self) -> str:
        """A short name for messages and ``repr`` of chains."""
        return getattr(self, "name", None) or getattr(self.update, "__qualname__", "transform")

    def state_count(self) -> int:
        """How many entries of a chain's flat state list this transformation owns."""
        return 1

    def fused_with(self, following: GradientTransformation) -> GradientTransformation | None:
        """The one transformation doing ``self`` then ``following``, if they fuse (else None)."""
        return None

    def init_states(self, params: Any) -> list[Any]:
        """The initial states, one per :meth:`state_count`."""
        return [self.init(params)]

    def update_states(
        self,
        updates: Any,
        states: Sequence[Any],
        *,
        params: Any = None,
        inplace: bool = True,
        apply: bool = False,
    ) -> tuple[Any, list[Any]]:
        """One step on its own states; with ``apply`` return ``params + updates`` instead."""
        updates, state = self.update(updates, states[0], params=params, inplace=inplace)
        if apply:
            updates = apply_updates(params, updates, inplace=inplace)
        return updates, [state]


def _identity_init(params: Any) -> EmptyState:
    return EmptyState()


def _identity_update(
    updates: Any, state: Any, *, params: Any = None, inplace: bool = True
) -> tuple[Any, Any]:
    return updates, state


def identity() -> GradientTransformation:
    """The transform that leaves updates unchanged; its state is ``EmptyState()``."""
    return _IDENTITY


_IDENTITY = GradientTransformation(_identity_init, _identity_update)


class ChainedGradientTransformation(GradientTransformation):
    """A chain of transformations; ``transformations`` are its members.

    Runs as *units*: each maximal run of members that fuse (adjacent rule transformations,
    looking through nested chains, see :meth:`GradientTransformation.fused_with`) is one fused
    kernel; any other member (a global-norm clip, a hook) runs on its own between them. The
    state is a tuple with one entry per member; a member that is itself an ``opaque`` chain
    (what the aliases return, like TorchOpt's ``chain_flat``) keeps its own tuple inside it.
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
                states.extend(unit.init_states(params))
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
                updates, unit_new = unit.update_states(
                    updates, unit_states, params=params, inplace=inplace, apply=apply and last
                )
                new_states.extend(unit_new)
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
        members = ", ".join(tx.describe() for tx in self.transformations)
        return f"ChainedGradientTransformation({members})"

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


def _layout(members: Sequence[GradientTransformation], counter: Iterator[int]) -> tuple:
    """The nesting of a chain's state: a tuple of flat-state indices and sub-tuples."""
    layout: list[Any] = []
    for tx in members:
        if isinstance(tx, ChainedGradientTransformation):
            layout.append(_layout(tx.transformations, counter))
        elif tx.state_count() > 1:
            layout.append(tuple(next(counter) for _ in range(tx.state_count())))
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
    """Group members into (unit, number of member states); members that fuse become one unit."""
    units: list[tuple[GradientTransformation, int]] = []
    for tx in members:
        fused = units[-1][0].fused_with(tx) if units else None
        if fused is not None:
            units[-1] = (fused, units[-1][1] + tx.state_count())
        else:
            units.append((tx, tx.state_count()))
    return units


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
