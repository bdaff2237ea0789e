"""The functions a rule body may call: ``from optcompile import sym``; ``sym.sqrt(nu)``.

See :mod:`optcompile.lowering.functions` for each function and its derivative convention.
"""

from optcompile.lowering.functions import (
    abs,
    eq,
    exp,
    log,
    maximum,
    minimum,
    ne,
    sign,
    sqrt,
    where,
)

__all__ = ["sqrt", "abs", "sign", "exp", "log", "maximum", "minimum", "where", "eq", "ne"]
