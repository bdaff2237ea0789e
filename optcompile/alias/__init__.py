"""TorchOpt's functional optimizers, each a chain of rules that runs as one fused kernel.

The aliases are declared next to their rules (``optcompile/rules/<algo>.py``, see
:mod:`optcompile.registry`); this module hands every registered one out under its name. Every
alias ends with ``scale_by_neg_lr``: the update returned is the delta to add to the parameters
(``apply_updates``). ``lr`` may be a number, a 0-d tensor (``requires_grad=True`` gives its
hypergradient) or a schedule ``count -> lr``.
"""

from __future__ import annotations

from optcompile.alias import utils as utils
from optcompile.registry import optimizers

_ALIASES = {name: info.alias for name, info in optimizers().items()}
globals().update(_ALIASES)

__all__ = list(_ALIASES)  # pyright: ignore[reportUnsupportedDunderAll]
