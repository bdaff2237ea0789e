"""``AdaGrad``, ``Adagrad`` at TorchOpt's path ``optim.adagrad``."""

from optcompile.optim.classes import AdaGrad, Adagrad

__all__ = ["AdaGrad", "Adagrad"]
