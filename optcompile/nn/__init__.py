"""Modules for meta-learning, as ``torchopt.nn``: ``MetaGradientModule``, its implicit and
zero-order subclasses, and stateless helpers (``reparametrize``, ``swap_state``)."""

from optcompile.diff.implicit.nn.module import ImplicitMetaGradientModule
from optcompile.diff.zero_order.nn import ZeroOrderGradientModule
from optcompile.nn.module import MetaGradientModule
from optcompile.nn.stateless import reparameterize, reparametrize, swap_state

__all__ = [
    "MetaGradientModule",
    "ImplicitMetaGradientModule",
    "ZeroOrderGradientModule",
    "reparametrize",
    "reparameterize",
    "swap_state",
]
