"""``MetaAdaDelta``, ``MetaAdadelta`` at TorchOpt's path ``optim.meta.adadelta``."""

from optcompile.optim.classes import MetaAdaDelta, MetaAdadelta

__all__ = ["MetaAdaDelta", "MetaAdadelta"]
