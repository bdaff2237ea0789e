"""Zero-order gradients (``torchopt.diff.zero_order``): ``zero_order`` and its module class.

As in TorchOpt, the package itself is callable: ``optcompile.diff.zero_order(...)`` is
``optcompile.diff.zero_order.zero_order(...)``.
"""

import sys
import types
from typing import Any

from optcompile.diff.zero_order import nn
from optcompile.diff.zero_order.decorator import Samplable, zero_order
from optcompile.diff.zero_order.nn import ZeroOrderGradientModule

__all__ = ["zero_order", "ZeroOrderGradientModule", "Samplable", "nn"]


class _CallableModule(types.ModuleType):
    """This package's module type: calling it calls :func:`zero_order`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return zero_order(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
