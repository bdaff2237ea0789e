"""Implicit differentiation, as ``torchopt.diff.implicit``: ``custom_root``,
``custom_fixed_point`` and ``ImplicitMetaGradientModule``."""

from optcompile.diff.implicit import nn
from optcompile.diff.implicit.decorator import custom_fixed_point, custom_root
from optcompile.diff.implicit.nn import ImplicitMetaGradientModule

__all__ = ["custom_root", "custom_fixed_point", "ImplicitMetaGradientModule", "nn"]
