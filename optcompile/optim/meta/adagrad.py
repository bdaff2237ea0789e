"""``MetaAdaGrad``, ``MetaAdagrad`` at TorchOpt's path ``optim.meta.adagrad``."""

from optcompile.optim.classes import MetaAdaGrad, MetaAdagrad

__all__ = ["MetaAdaGrad", "MetaAdagrad"]
