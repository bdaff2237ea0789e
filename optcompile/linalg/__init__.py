"""Linear algebra for implicit differentiation, as ``torchopt.linalg``: conjugate gradient
and Neumann series on trees of tensors, sync-free and vmappable."""

from optcompile.linalg import utils  # noqa: F401 - public, as torchopt.linalg.utils
from optcompile.linalg.cg import cg
from optcompile.linalg.ns import ns, ns_inv

__all__ = ["cg", "ns", "ns_inv"]
