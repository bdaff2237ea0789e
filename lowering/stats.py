"""Counters of what the backends did: steps, VJP calls, graphs compiled, recompiles, fallbacks.

Backends report here (:func:`record`, :func:`record_fallback`); the eager backend is counted
by the registry through :func:`count_calls`, so ``eager.py`` stays free of bookkeeping. Tests
read :func:`stats` to assert "no recompile" and "fell back, and why".

Example:
    >>> from optcompile.lowering.stats import reset_stats, stats
    >>> reset_stats()
    >>> stats()["eager"]["steps"]
    0
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["stats", "reset_stats", "record", "record_fallback", "count_calls"]

_COUNTERS = ("steps", "vjp_calls", "graphs", "recompiles", "compile_seconds")

_lock = threading.Lock()
_counts: dict[str, dict[str, float]] = {}
# (backend, kernel, reason) -> how often; a dict keeps first-seen order.
_fallbacks: dict[tuple[str, str, str], int] = {}


def record(backend: str, counter: str, amount: float = 1) -> None:
    """Add ``amount`` to one counter of ``backend``.

    Args:
        backend: the backend's name.
        counter: one of steps, vjp_calls, graphs, recompiles, compile_seconds.
        amount: how much to add.

    Raises:
        ValueError: an unknown counter.
    """
    if counter not in _COUNTERS:
        raise ValueError(f"counter={counter!r} is not one of {', '.join(_COUNTERS)}")
    with _lock:
        row = _counts.setdefault(backend, dict.fromkeys(_COUNTERS, 0))
        row[counter] += amount


def record_fallback(backend: str, kernel: str, reason: str) -> None:
    """Note that ``backend`` could not run ``kernel`` and something else ran it instead."""
    with _lock:
        key = (backend, kernel, reason)
        _fallbacks[key] = _fallbacks.get(key, 0) + 1


def _backend_names() -> list[str]:
    # Imported here, not at the top: the registry imports the backends, which import this.
    from optcompile.lowering import backends

    return list(backends.BACKENDS)


def stats() -> dict[str, dict[str, Any]]:
    """What each backend did since the process started or the last :func:`reset_stats`.

    Returns:
        ``{backend name: {"steps", "vjp_calls", "graphs", "recompiles", "compile_seconds",
        "fallbacks"}}`` for every registered backend. ``steps`` counts forward calls (one per
        optimizer step and parameter group), ``vjp_calls`` backward calls, ``graphs`` compiled
        graphs, ``recompiles`` graphs compiled for a kernel and direction that already had a
        graph for other shapes, dtypes, devices or leaf counts. ``fallbacks`` lists
        ``{"kernel", "reason", "count"}`` for each time this backend was skipped, both at
        selection and at run time (a failed compile).
    """
    names = _backend_names()
    with _lock:
        merged = dict(_fallbacks)
        counts = {name: dict(row) for name, row in _counts.items()}
    result: dict[str, dict[str, Any]] = {}
    for name in [*names, *(n for n in counts if n not in names)]:
        row: dict[str, Any] = {c: 0 for c in _COUNTERS}
        row.update(counts.get(name, {}))
        row["fallbacks"] = [
            {"kernel": k, "reason": r, "count": n} for (b, k, r), n in merged.items() if b == name
        ]
        result[name] = row
    return result


def reset_stats() -> None:
    """Zero every counter and forget recorded fallbacks.

    Compiled graphs are kept: a reset never causes a recompile.
    """
    with _lock:
        _counts.clear()
        _fallbacks.clear()


def count_calls(backend: Any) -> Any:
    """Make ``backend`` (an instance) count its forward and VJP calls under its name.

    For backends that do not count themselves (eager); idempotent. Returns ``backend``.
    """
    if getattr(backend, "_optcompile_counted", False):
        return backend
    name: str = backend.name
    forward, vjp = backend.forward, backend.vjp

    def counted_forward(kernel: Any) -> Callable[..., Any]:
        fn = forward(kernel)

        def run(*args: Any) -> Any:
            record(name, "steps")
            return fn(*args)

        return run

    def counted_vjp(kernel: Any) -> Callable[..., Any]:
        fn = vjp(kernel)

        def run(*args: Any) -> Any:
            record(name, "vjp_calls")
            return fn(*args)

        return run

    # Instance attributes shadow the methods; the class (and other instances) are untouched.
    backend.forward = counted_forward
    backend.vjp = counted_vjp
    backend._optcompile_counted = True
    return backend
