"""``AdaDelta``, ``Adadelta`` at TorchOpt's path ``optim.adadelta``."""

from optcompile.optim.classes import AdaDelta, Adadelta

__all__ = ["AdaDelta", "Adadelta"]
