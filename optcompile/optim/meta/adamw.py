"""``MetaAdamW`` at TorchOpt's path ``optim.meta.adamw``."""

from optcompile.optim.classes import MetaAdamW

__all__ = ["MetaAdamW"]
