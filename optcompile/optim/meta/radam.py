"""``MetaRAdam`` at TorchOpt's path ``optim.meta.radam``."""

from optcompile.optim.classes import MetaRAdam

__all__ = ["MetaRAdam"]
