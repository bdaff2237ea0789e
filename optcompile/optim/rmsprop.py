"""``RMSProp``, ``RMSprop`` at TorchOpt's path ``optim.rmsprop``."""

from optcompile.optim.classes import RMSProp, RMSprop

__all__ = ["RMSProp", "RMSprop"]
