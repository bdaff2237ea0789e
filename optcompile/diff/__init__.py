"""Differentiation beyond unrolling, as ``torchopt.diff``: implicit and zero-order."""

from optcompile.diff import implicit, zero_order
from optcompile.diff.implicit import ImplicitMetaGradientModule

__all__ = ["implicit", "zero_order", "ImplicitMetaGradientModule"]
