"""The meta-optimizers, at TorchOpt's path ``optim.meta``: ``MetaOptimizer`` and ``Meta*``.

The ``Meta*`` classes are generated in :mod:`optcompile.optim.classes` from the registry (which
imports ``MetaOptimizer`` from :mod:`.base`), so they are handed out on first access; the
per-algorithm modules (``optim.meta.adam``, ...) re-export them at TorchOpt's paths.
"""

from __future__ import annotations

from typing import Any

from optcompile.optim.meta.base import MetaOptimizer
from optcompile.registry import optimizers

__all__ = [  # pyright: ignore[reportUnsupportedDunderAll]
    "MetaOptimizer",
    *(m for info in optimizers().values() for m in info.meta_classes),
]


def __getattr__(name: str) -> Any:
    if name.startswith("Meta"):
        from optcompile.optim import classes

        if name in classes.__all__:
            return getattr(classes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
