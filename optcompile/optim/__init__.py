"""Optimizer objects: torch-style (``Adam``), meta (``MetaAdam``) and functional wrappers.

The torch-style and meta classes are generated from the optimizer registry
(:mod:`optcompile.optim.classes`) and published here as they are registered.
"""

from optcompile.optim import classes as classes
from optcompile.optim.base import Optimizer
from optcompile.optim.func import FuncOptimizer
from optcompile.optim.meta import MetaOptimizer
from optcompile.registry import publish_into

__all__ = ["Optimizer", "MetaOptimizer", "FuncOptimizer"]
publish_into(globals(), __all__, classes.classes_of_registered)
