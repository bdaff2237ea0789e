"""TorchOpt's ``torchopt.utils`` names, so ``torchopt.utils.extract_state_dict`` code runs as is.

The implementations live in :mod:`optcompile.state`.
"""

from optcompile.state import *  # noqa: F403 - the same public names
from optcompile.state import __all__ as __all__
