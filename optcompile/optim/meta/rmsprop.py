"""``MetaRMSProp``, ``MetaRMSprop`` at TorchOpt's path ``optim.meta.rmsprop``."""

from optcompile.optim.classes import MetaRMSProp, MetaRMSprop

__all__ = ["MetaRMSProp", "MetaRMSprop"]
