"""Differentiation beyond unrolling, at TorchOpt's paths (``torchopt.diff``)."""

from optcompile.diff import zero_order

__all__ = ["zero_order"]
