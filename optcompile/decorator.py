"""``@optcompile``: run every optimizer step inside a function on a chosen fused backend.

Example:
    >>> from optcompile import optcompile
    >>> @optcompile(backend="eager")
    ... def inner_loop(net, optim, batches):
    ...     for x, y in batches:
    ...         optim.step(((net(x) - y) ** 2).mean())

What it does: inside the call, every optcompile step whose transform did not name a backend
runs on ``backend`` (``"inductor"`` by default: one fused compiled kernel per step, forward and
backward); the first call compiles what the loop needs and says so on stderr. With
``first_order=True`` the inner steps are not differentiated through (first-order MAML): inner
gradients are taken without ``create_graph`` and the updates enter the graph as constants, so the
outer gradient flows to the initial parameters along the identity path only.

What it does not do: compile the user's own code around the steps (the model's forward and the
loss). The second-order path cannot be compiled, since AOTAutograd does not support double
backward; so only the optimizer's math is compiled, and results are identical, to float
tolerance, with and without the decorator.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from optcompile.lowering.backends import _check_name

__all__ = ["optcompile", "current_backend", "first_order_active"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Settings:
    backend: str
    first_order: bool


_active: contextvars.ContextVar[_Settings | None] = contextvars.ContextVar(
    "optcompile_settings", default=None
)


def current_backend() -> str | None:
    """The backend chosen by the innermost active ``@optcompile`` call, if any."""
    settings = _active.get()
    return None if settings is None else settings.backend


def first_order_active() -> bool:
    """Whether the innermost active ``@optcompile`` call asked for first-order steps."""
    settings = _active.get()
    return settings is not None and settings.first_order


def optcompile(fn: F | None = None, *, backend: str = "inductor", first_order: bool = False) -> Any:
    """Decorate an inner loop so its optimizer steps run fused on ``backend``.

    Args:
        fn: the function (usable as ``@optcompile`` or ``@optcompile(...)``).
        backend: ``"inductor"``, ``"native"``, ``"eager"`` or ``"auto"``.
        first_order: do not differentiate through the updates (first-order MAML).

    Raises:
        ValueError: an unknown backend name.
        TypeError: ``first_order`` is not a bool, or ``fn`` is a generator or coroutine function.
    """
    _check_name(backend)
    if not isinstance(first_order, bool):
        raise TypeError(f"first_order={first_order!r} must be True or False")

    def decorate(function: F) -> F:
        if inspect.isgeneratorfunction(function) or inspect.iscoroutinefunction(function):
            # Their bodies run after the call returns, outside the settings' scope.
            raise TypeError(
                f"@optcompile cannot decorate the generator or coroutine function "
                f"{function.__qualname__}: its body runs after the call returns, outside the "
                f"decorator's settings; decorate a plain function that runs the inner loop"
            )
        first_call = [True]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _active.set(_Settings(backend, bool(first_order)))
            try:
                if not first_call[0]:
                    return function(*args, **kwargs)
                first_call[0] = False
                return _first_call(function, args, kwargs)
            finally:
                _active.reset(token)

        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _first_call(function: Callable, args: tuple, kwargs: dict) -> Any:
    from optcompile.lowering.stats import stats

    before = _graphs(stats())
    start = time.perf_counter()
    result = function(*args, **kwargs)
    compiled = _graphs(stats()) - before
    if compiled:
        print(
            f"optcompile: {function.__qualname__} compiled {compiled} kernel graph(s) on its "
            f"first call ({time.perf_counter() - start:.1f} s including the run); later calls "
            f"reuse them",
            file=sys.stderr,
        )
    return result


def _graphs(report: dict) -> int:
    return sum(entry.get("graphs", 0) for entry in report.values() if isinstance(entry, dict))
