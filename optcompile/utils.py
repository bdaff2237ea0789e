"""TorchOpt's ``torchopt.utils`` names, so ``torchopt.utils.extract_state_dict`` code runs as is.

The implementations live in :mod:`optcompile.state`.
"""

from optcompile.state import (
    ModuleState,
    extract_state_dict,
    module_clone,
    module_detach_,
    recover_state_dict,
    stop_gradient,
)

__all__ = [
    "ModuleState",
    "extract_state_dict",
    "recover_state_dict",
    "stop_gradient",
    "module_clone",
    "module_detach_",
]
