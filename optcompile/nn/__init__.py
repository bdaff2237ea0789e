"""Modules whose gradients come from somewhere other than backpropagation (``torchopt.nn``)."""

from optcompile.diff.zero_order.nn import ZeroOrderGradientModule

__all__ = ["ZeroOrderGradientModule"]
