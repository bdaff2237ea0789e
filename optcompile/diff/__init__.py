"""Differentiation beyond unrolling, as ``torchopt.diff``."""

from optcompile.diff import implicit
from optcompile.diff.implicit import ImplicitMetaGradientModule

__all__ = ["implicit", "ImplicitMetaGradientModule"]
