"""``Adam`` at TorchOpt's path ``optim.adam``."""

from optcompile.optim.classes import Adam

__all__ = ["Adam"]
