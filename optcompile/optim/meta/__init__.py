"""The meta-optimizers, at TorchOpt's path ``optim.meta``: ``MetaOptimizer`` and ``Meta*``.

The ``Meta*`` classes are generated in :mod:`optcompile.optim.classes` from the registry (which
imports ``MetaOptimizer`` from :mod:`.base`), so they are handed out on first access; the
per-algorithm modules (``optim.meta.adam``, ...) re-export them at TorchOpt's paths.
"""

from __future__ import annotations

from typing import Any

from optcompile.optim.meta.base import MetaOptimizer
from optcompile.registry import optimizers

_GENERATED = tuple(m for info in optimizers().values() for m in info.meta_classes)
__all__ = ["MetaOptimizer", *_GENERATED]  # pyright: ignore[reportUnsupportedDunderAll]


def __getattr__(name: str) -> Any:
    if name in _GENERATED:
        from optcompile.optim import classes

        return getattr(classes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
