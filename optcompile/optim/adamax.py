"""``AdaMax``, ``Adamax`` at TorchOpt's path ``optim.adamax``."""

from optcompile.optim.classes import AdaMax, Adamax

__all__ = ["AdaMax", "Adamax"]
