"""``FuncOptimizer``, at TorchOpt's paths ``optim.func`` and ``optim.func.base``."""

from optcompile.optim.func.base import FuncOptimizer

__all__ = ["FuncOptimizer"]
