"""``MetaAdaMax``, ``MetaAdamax`` at TorchOpt's path ``optim.meta.adamax``."""

from optcompile.optim.classes import MetaAdaMax, MetaAdamax

__all__ = ["MetaAdaMax", "MetaAdamax"]
