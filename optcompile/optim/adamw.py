"""``AdamW`` at TorchOpt's path ``optim.adamw``."""

from optcompile.optim.classes import AdamW

__all__ = ["AdamW"]
