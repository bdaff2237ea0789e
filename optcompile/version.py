"""optcompile's version, at TorchOpt's path ``version.__version__``."""

__all__ = ["__version__"]

__version__ = "0.1.0"
