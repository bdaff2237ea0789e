"""Backend registry and resolution: ``auto``, ``inductor``, ``native``, ``eager``.

:func:`resolve_backend` is the one place a step's backend is decided. The name comes from the
transform (``backend=``), else from the innermost ``@optcompile`` call, else from the process
default (:func:`set_default_backend`); ``auto`` picks the first backend, in :data:`AUTO_ORDER`,
that supports the kernel on the device, and for a step too small to repay a compilation the
first that does not compile per shape (the native Adam, built once per machine, else eager),
or for a toy-sized step the eager reference. Skipping a backend warns once per
(backend, reason) and is recorded in :func:`optcompile.lowering.stats.stats`.
"""

from __future__ import annotations

import warnings

import torch

from optcompile.lowering.backends.base import Backend
from optcompile.lowering.backends.eager import EagerBackend
from optcompile.lowering.backends.inductor import InductorBackend
from optcompile.lowering.backends.native import NativeBackend
from optcompile.lowering.kernel import Kernel
from optcompile.lowering.stats import count_calls, record_fallback

__all__ = [
    "Backend",
    "BACKENDS",
    "AUTO_ORDER",
    "get_backend",
    "check_backend_name",
    "resolve_backend",
    "set_default_backend",
    "default_backend",
    "register_backend",
    "set_auto_compile_threshold",
]

BACKENDS: dict[str, Backend] = {"eager": EagerBackend()}
AUTO_ORDER: list[str] = ["eager"]
_default = "auto"
_warned: set[tuple[str, str, str]] = set()
# Under "auto", a step over fewer elements than this (all tensors together) is not compiled per
# shape: compiling costs 1-12 s and would save a few microseconds per step (the seed
# tutorial's one-parameter networks would wait seconds for nothing). 2**15 float32 = 128 KiB.
# Such a step runs on the native Adam (built once per machine, cached on disk) or eagerly.
_auto_compile_threshold = 2**15
# Below this many elements (toy problems, tutorials: a step costs microseconds whatever runs
# it) "auto" runs the eager reference, whose results match TorchOpt's to the last digit; the
# native Adam rounds differently in the last bit.
_REFERENCE_BELOW = 2**12


def register_backend(backend: Backend, *, auto_position: int | None = None) -> None:
    """Make ``backend`` selectable by name; ``auto_position`` inserts it into ``auto``'s order."""
    BACKENDS[backend.name] = backend
    if auto_position is not None and backend.name not in AUTO_ORDER:
        AUTO_ORDER.insert(auto_position, backend.name)


def check_backend_name(name: str, argument: str = "backend") -> None:
    """Raise ValueError unless ``name`` is ``"auto"`` or a registered backend."""
    if name != "auto" and name not in BACKENDS:
        choices = ", ".join(repr(n) for n in ["auto", *BACKENDS])
        raise ValueError(f"{argument}={name!r} is not a backend; expected one of {choices}")


def set_default_backend(name: str) -> None:
    """Set the process-wide backend used where a transform says ``backend=None``."""
    global _default
    check_backend_name(name)
    _default = name


def set_auto_compile_threshold(elements: int) -> None:
    """Under ``auto``, steps over fewer than ``elements`` elements never compile (0: any may).

    Explicitly named backends are not affected.
    """
    global _auto_compile_threshold
    if isinstance(elements, bool) or not isinstance(elements, int) or elements < 0:
        raise ValueError(f"elements={elements!r} must be an integer >= 0")
    _auto_compile_threshold = elements


def default_backend() -> str:
    """The process-wide default backend name (``"auto"`` unless changed)."""
    return _default


def get_backend(name: str) -> Backend:
    """The backend registered under ``name`` (not ``"auto"``)."""
    check_backend_name(name)
    return BACKENDS[name]


def resolve_backend(
    name: str | None, kernel: Kernel, device: torch.device, elements: int | None = None
) -> Backend:
    """The backend that runs ``kernel`` on ``device`` for the requested ``name``.

    ``name`` None means the process default. An explicit name that cannot run the kernel falls
    back like ``auto`` does. Every skip is counted in
    :func:`~optcompile.lowering.stats.stats`; a warning says once per (backend skipped, reason,
    backend used) why, so a user sees each distinct fallback exactly once. Under ``auto``,
    native skipping a kernel that is not Adam is expected and not warned about; a step over
    fewer than the compile threshold's ``elements`` skips the backends that compile per shape
    (:attr:`Backend.compiles_per_shape`), and one under 4096 elements runs on the eager
    reference. With a named backend only that backend's skip is warned about (the message names
    the one used).
    """
    name = _default if name is None else name
    check_backend_name(name)
    if name != "auto":
        order = [name, *(n for n in AUTO_ORDER if n != name)]
    elif elements is None or elements >= _auto_compile_threshold:
        order = AUTO_ORDER
    elif elements >= _REFERENCE_BELOW:
        order = [n for n in AUTO_ORDER if not BACKENDS[n].compiles_per_shape]
    else:
        return BACKENDS["eager"]
    skipped: list[tuple[str, str]] = []
    for candidate in order:
        backend = BACKENDS[candidate]
        reason = backend.supports(kernel, device)
        if reason is None:
            break
        record_fallback(candidate, kernel.name, reason)
        skipped.append((candidate, reason))
    else:  # pragma: no cover - eager supports everything
        backend = BACKENDS["eager"]
    for candidate, reason in skipped:
        if name == "auto" and candidate == "native":
            continue
        if name != "auto" and candidate != name:
            # The user named one backend: say why it was skipped, not why the fallbacks
            # tried behind it were (they are in stats()).
            continue
        key = (candidate, reason, backend.name)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"optcompile: backend {candidate!r} cannot run {kernel.name} on {device}: "
                f"{reason}; using {backend.name!r}",
                RuntimeWarning,
                stacklevel=3,
            )
    return backend


# Last, so that the registry exists; inductor.py and stats.py never import this module.
count_calls(BACKENDS["eager"])
register_backend(InductorBackend(), auto_position=0)
register_backend(NativeBackend(), auto_position=1)
