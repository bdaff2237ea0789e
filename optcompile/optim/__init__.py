"""Optimizer objects: torch-style (``Adam``), meta (``MetaAdam``) and functional wrappers."""

from optcompile.optim.base import Optimizer
from optcompile.optim.classes import *  # noqa: F403 - the generated classes, listed in __all__
from optcompile.optim.classes import __all__ as _classes
from optcompile.optim.func import FuncOptimizer
from optcompile.optim.meta import MetaOptimizer

__all__ = ["Optimizer", "MetaOptimizer", "FuncOptimizer", *_classes]
