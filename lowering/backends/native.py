"""The native backend: the hand-written C++/CUDA Adam of ``csrc/adam`` for kernels that are Adam.

It runs any kernel whose maths *is* Adam's update, optionally scaled by ``-lr``: a kernel is
recognised by comparing its expressions with a reference Adam traced here (after renaming the
inputs positionally), not by its name, so a user rule that happens to be called ``scale_by_adam``
is never mistaken for it. The C++ forward and backward implement the same formulas as the rule
and its derived safe VJP (``tests/test_native_adam.py`` checks them against the eager kernel).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from optcompile.lowering import functions as sym
from optcompile.lowering import stats
from optcompile.lowering.backends import native_ops
from optcompile.lowering.backends.base import Backend, ForwardFn, TensorLists, VjpFn
from optcompile.lowering.backends.eager import run_vjp
from optcompile.lowering.compose import compose
from optcompile.lowering.kernel import Kernel, Variant
from optcompile.lowering.trace import RuleIR, trace

if TYPE_CHECKING:
    import sympy

__all__ = ["NativeBackend"]


def _adam(
    g: sympy.Expr,
    mu: sympy.Expr,
    nu: sympy.Expr,
    *,
    b1: sympy.Expr | float = 0.9,
    b2: sympy.Expr | float = 0.999,
    eps: sympy.Expr | float = 1e-8,
    eps_root: sympy.Expr | float = 0.0,
    count: sympy.Expr,
) -> tuple[sympy.Expr, tuple[sympy.Expr, sympy.Expr]]:
    # Traced on symbols (trace() passes a sympy.Symbol for every hyper-parameter too).
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    mu_hat = mu / (1 - b1**count)
    nu_hat = nu / (1 - b2**count)
    return mu_hat / (sym.sqrt(nu_hat + eps_root) + eps), (mu, nu)


def _neg_lr(g: sympy.Expr, *, lr: sympy.Expr | float = 1e-3) -> tuple[sympy.Expr, tuple[()]]:
    return -lr * g, ()


@functools.cache
def _patterns() -> dict[str, RuleIR]:
    adam = trace(_adam, ("mu", "nu"))
    return {"adam": adam, "adam*-lr": compose([adam, trace(_neg_lr, ())], "adam*-lr")}


def _match(ir: RuleIR) -> str | None:
    """The name of the reference pattern ``ir`` computes, or None."""
    for name, pattern in _patterns().items():
        if (
            len(ir.tensor_inputs) != len(pattern.tensor_inputs)
            or len(ir.scalar_inputs) != len(pattern.scalar_inputs)
            or len(ir.counts) != len(pattern.counts)
        ):
            continue
        renaming = dict(zip(ir.tensor_inputs, pattern.tensor_inputs, strict=True))
        renaming.update(zip(ir.scalar_inputs, pattern.scalar_inputs, strict=True))
        # Structural equality: the same maths written the same way. A rule that computes Adam
        # differently is simply not recognised (and runs on another backend).
        if tuple(out.xreplace(renaming) for out in ir.outputs) == pattern.outputs:
            return name
    return None


class NativeBackend(Backend):
    """Runs Adam kernels on ``torch.ops.optcompile.adam_forward`` / ``adam_backward``."""

    name = "native"
    # The C++ kernels take hyper-parameters as numbers: one call per task under vmap.
    batched_scalars = False

    def __init__(self) -> None:
        # Weak keys, not id(kernel): kernels are evicted from the fused-kernel cache, and a new
        # kernel at a dead one's address must not inherit its match.
        self._patterns: weakref.WeakKeyDictionary[Kernel, str | None] = weakref.WeakKeyDictionary()

    def _pattern(self, kernel: Kernel) -> str | None:
        if kernel not in self._patterns:
            self._patterns[kernel] = _match(kernel.ir)
        return self._patterns[kernel]

    def supports(self, kernel: Kernel, device: torch.device) -> str | None:
        if self._pattern(kernel) is None:
            return (
                "the native kernels cover Adam only (scale_by_adam, optionally followed by "
                f"scale_by_neg_lr), not {kernel.name}"
            )
        if not native_ops.is_available(device):
            return f"the native Adam extension is not available on {device.type}"
        return None

    def forward(self, kernel: Kernel) -> ForwardFn:
        def run(
            tensor_lists: TensorLists, scalars: Sequence[torch.Tensor]
        ) -> list[list[torch.Tensor]]:
            native_ops.build()  # loaded once; also when called without supports() first
            stats.record(self.name, "steps")
            step_size, count, hypers = self._unpack(kernel, scalars)
            outputs = [
                torch.ops.optcompile.adam_forward(g, mu, nu, step_size, count, *hypers)
                for g, mu, nu in zip(*tensor_lists, strict=True)
            ]
            return [list(column) for column in zip(*outputs, strict=True)]

        return run

    def vjp(self, kernel: Kernel) -> VjpFn:
        def run(
            variant: Variant,
            cotangent_lists: Sequence[Sequence[torch.Tensor] | None],
            tensor_lists: TensorLists,
            scalars: Sequence[torch.Tensor],
        ) -> tuple[list[list[torch.Tensor] | None], list[torch.Tensor | None]]:
            # The kernel differentiates g, mu, nu and the step size; a learnable beta or eps
            # needs the eager VJP.
            if any(variant.needs_grad[3:7]):
                stats.record("eager", "vjp_calls")
                return run_vjp(kernel, variant, cotangent_lists, tensor_lists, scalars)
            native_ops.build()
            stats.record(self.name, "vjp_calls")
            step_size, count, hypers = self._unpack(kernel, scalars)
            ct_u, ct_mu, ct_nu = (
                c if c is not None else [None] * len(tensor_lists[0]) for c in cotangent_lists
            )
            per_leaf = []
            for i, (g, mu, nu) in enumerate(zip(*tensor_lists, strict=True)):
                u_bar = ct_u[i] if ct_u[i] is not None else torch.zeros_like(g)
                per_leaf.append(
                    torch.ops.optcompile.adam_backward(
                        u_bar, ct_mu[i], ct_nu[i], g, mu, nu, step_size, count, *hypers
                    )
                )
            columns = list(zip(*per_leaf, strict=True))
            tensor_grads = [list(columns[j]) if variant.needs_grad[j] else None for j in range(3)]
            scalar_grads: list[torch.Tensor | None] = [None] * 4
            if self._pattern(kernel) == "adam*-lr":
                needs_lr = variant.needs_grad[7]
                scalar_grads.append(-torch.stack(columns[3]).sum() if needs_lr else None)
            return tensor_grads, scalar_grads

        return run

    def _unpack(
        self, kernel: Kernel, scalars: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        b1, b2, eps, eps_root = (float(s) for s in scalars[:4])
        count = scalars[-1]
        if self._pattern(kernel) == "adam*-lr":
            step_size = -scalars[4].detach()
        else:
            # float64 whatever count's dtype: the op wants a floating step size.
            step_size = torch.ones((), dtype=torch.float64, device=count.device)
        return step_size, count, [b1, b2, eps, eps_root]
