"""``ImplicitMetaGradientModule``, as ``torchopt.diff.implicit.nn``."""

import optcompile.nn.module  # noqa: F401 - preloaded: breaks the nn <-> diff.implicit cycle
from optcompile.diff.implicit.nn.module import ImplicitMetaGradientModule

__all__ = ["ImplicitMetaGradientModule"]
