"""``RAdam`` at TorchOpt's path ``optim.radam``."""

from optcompile.optim.classes import RAdam

__all__ = ["RAdam"]
