"""The optimizer model shared by every transform: a pair of pure functions.

An optimizer is a :class:`GradientTransformation` ``(init, update)`` (the Optax model that TorchOpt
uses): ``init(params) -> state`` and ``update(updates, state, *, params=None, inplace=True) ->
(updates, state)``. ``updates`` is the gradient on the way in and the delta to add to the
parameters on the way out (see :func:`optcompile.apply_updates`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

__all__ = [
    "EmptyState",
    "UninitializedState",
    "GradientTransformation",
    "identity",
    *("ChainedGradientTransformation",),  # from combine, see __getattr__
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
        from optcompile.combine import chain

        return chain(self, next_transform)


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


def __getattr__(name: str) -> Any:
    # TorchOpt defines ChainedGradientTransformation in base; here it lives with chain() in
    # combine, which imports this module, so base hands it out on first access.
    if name == "ChainedGradientTransformation":
        from optcompile.combine import ChainedGradientTransformation

        return ChainedGradientTransformation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
