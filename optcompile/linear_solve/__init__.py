"""Linear solvers ``(matvec, b) -> x`` for the adjoint systems of implicit differentiation,
as ``torchopt.linear_solve``."""

from optcompile.linear_solve.cg import solve_cg
from optcompile.linear_solve.inv import solve_inv
from optcompile.linear_solve.normal_cg import solve_normal_cg

__all__ = ["solve_cg", "solve_normal_cg", "solve_inv"]
