"""Run settings of the active ``@optcompile`` calls: the backend and first-order flag.

One small module that the decorator writes and the step runtime reads (``fused``, the
meta-optimizers, checkpointed segments). The settings live in a per-thread stack rather than
a ``ContextVar``: Dynamo traces reads of it inside a compiled step (and guards on them), where
it cannot trace ``ContextVar.get``. A checkpointed segment takes a :func:`snapshot` and replays
its steps under :func:`restored`, since the outer backward usually runs after the decorated
call has returned.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "Settings",
    "activated",
    "current_backend",
    "first_order_active",
    "restored",
    "snapshot",
]


@dataclass(frozen=True)
class Settings:
    """What one ``@optcompile`` call asks of the steps inside it."""

    backend: str
    first_order: bool


_local = threading.local()


def _stack() -> list[Settings]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    stack: list[Settings] = _local.stack
    return stack


def _innermost() -> Settings | None:
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


def current_backend() -> str | None:
    """The backend chosen by the innermost active ``@optcompile`` call, if any."""
    settings = _innermost()
    return None if settings is None else settings.backend


def first_order_active() -> bool:
    """Whether the innermost active ``@optcompile`` call asked for first-order steps."""
    settings = _innermost()
    return settings is not None and settings.first_order


@contextlib.contextmanager
def activated(settings: Settings | None) -> Iterator[None]:
    """Make ``settings`` the innermost within the block (None: leave them as they are)."""
    if settings is None:
        yield
        return
    stack = _stack()
    stack.append(settings)
    try:
        yield
    finally:
        stack.pop()


def snapshot() -> Settings | None:
    """The settings in force now, to replay a computation under them later."""
    return _innermost()


def restored(settings: Settings | None) -> contextlib.AbstractContextManager[None]:
    """The block runs under ``settings`` as :func:`snapshot` took them (None: no decorator)."""
    if settings is None:
        return _without_settings()
    return activated(settings)


@contextlib.contextmanager
def _without_settings() -> Iterator[None]:
    saved = list(_stack())
    _stack().clear()
    try:
        yield
    finally:
        _stack().extend(saved)
