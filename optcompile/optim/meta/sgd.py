"""``MetaSGD`` at TorchOpt's path ``optim.meta.sgd``."""

from optcompile.optim.classes import MetaSGD

__all__ = ["MetaSGD"]
