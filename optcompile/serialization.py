"""``torch.load`` with its default ``weights_only=True`` loads every optcompile state.

PyTorch's safe unpickler accepts only classes registered with
``torch.serialization.add_safe_globals``. optcompile's states are NamedTuples of tensors, lists
and numbers (safe by construction), so every state class is registered: the fixed ones here at
import, the per-rule ones (``ScaleByAdamState`` with or without a ``count``) when
:mod:`optcompile.rule` creates them, and both variants of every built-in rule's state here, so
that a fresh process loads a checkpoint before it has built the optimizer.
"""

from __future__ import annotations

import torch

__all__ = ["register_safe_globals"]


def register_safe_globals(*classes: type) -> None:
    """Let ``torch.load(..., weights_only=True)`` rebuild instances of ``classes``.

    Raises:
        TypeError: an argument is not a class.
    """
    for i, cls in enumerate(classes):
        if not isinstance(cls, type):
            raise TypeError(f"classes[{i}] must be a class, got {type(cls).__name__}")
    torch.serialization.add_safe_globals(list(classes))


def _register_builtin_states() -> None:
    from optcompile.base import EmptyState, UninitializedState
    from optcompile.rules import registry
    from optcompile.state import ModuleState
    from optcompile.transform import (
        AddNoiseState,
        ApplyIfFiniteState,
        LookaheadState,
        MaskedState,
        MultiStepsState,
        MultiTransformState,
    )

    register_safe_globals(
        EmptyState,
        UninitializedState,
        MaskedState,
        ModuleState,
        AddNoiseState,
        ApplyIfFiniteState,
        LookaheadState,
        MultiStepsState,
        MultiTransformState,
    )
    for rule in registry().values():
        rule.state_type_for(True)  # created, hence registered (see optcompile.rule)
        rule.state_type_for(False)
