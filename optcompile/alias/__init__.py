"""TorchOpt's functional optimizers, each a chain of rules that runs as one fused kernel.

The aliases are declared next to their rules (``optcompile/rules/<algo>.py``, see
:mod:`optcompile.registry`); this module hands every registered one out under its name. Every
alias ends with ``scale_by_neg_lr``: the update returned is the delta to add to the parameters
(``apply_updates``). ``lr`` may be a number, a 0-d tensor (``requires_grad=True`` gives its
hypergradient) or a schedule ``count -> lr``.
"""

from __future__ import annotations

from optcompile.alias import utils as utils
from optcompile.registry import publish_into

__all__: list[str] = []  # pyright: ignore[reportUnsupportedDunderAll]
publish_into(globals(), __all__, lambda info: {info.name: info.alias})
