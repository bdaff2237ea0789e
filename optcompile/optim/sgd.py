"""``SGD`` at TorchOpt's path ``optim.sgd``."""

from optcompile.optim.classes import SGD

__all__ = ["SGD"]
