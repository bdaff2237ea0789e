"""optcompile.lowering: rule -> checked IR -> symbolic VJP -> eager / inductor / native kernels.

One module per stage, none importing a later one: ``trace`` (Python -> sympy), ``check``
(allowed subset, domains), ``safe`` (the derivative table), ``diff`` (symbolic VJP), ``cse``,
``emit`` (printers), ``kernel`` (forward + VJP sources), ``backends``, ``autograd``.
"""
