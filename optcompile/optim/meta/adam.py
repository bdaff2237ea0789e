"""``MetaAdam`` at TorchOpt's path ``optim.meta.adam``."""

from optcompile.optim.classes import MetaAdam

__all__ = ["MetaAdam"]
