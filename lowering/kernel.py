"""A rule made ready for backends: checked, with emitted forward and VJP sources.

A :class:`Kernel` is the rule's IR after ``check``; its forward source is emitted once, one VJP
source per *variant* — which inputs need a gradient and which outputs bring a cotangent — so
that a backward computes only what autograd asks for, and one JVP (forward-mode) source per set
of inputs that carry a tangent.
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple

import sympy

from optcompile.lowering import diff
from optcompile.lowering.check import check_rule
from optcompile.lowering.emit import runtime
from optcompile.lowering.emit.torch import OutputSpec, emit_function
from optcompile.lowering.trace import RuleIR

if TYPE_CHECKING:
    import torch

__all__ = ["Kernel", "Variant"]


class Variant(NamedTuple):
    """Which VJP to build.

    Attributes:
        needs_grad: one flag per tensor input then per hyper-parameter (count never gets one).
        has_cotangent: one flag per output (new update, new state...).
    """

    needs_grad: tuple[bool, ...]
    has_cotangent: tuple[bool, ...]


class Kernel:
    """The lowering-ready form of one rule (possibly a fused chain of rules)."""

    def __init__(self, ir: RuleIR) -> None:
        check_rule(ir)
        self.ir = ir
        self._vjp_cache: dict[
            Variant, tuple[str, Callable[..., tuple[torch.Tensor | None, ...]]]
        ] = {}
        self._jvp_cache: dict[tuple[bool, ...], Callable[..., tuple[torch.Tensor | None, ...]]] = {}

    @property
    def name(self) -> str:
        return self.ir.name

    @cached_property
    def cotangent_symbols(self) -> tuple[sympy.Symbol, ...]:
        """One cotangent symbol per output: ``ct_<update>``, ``ct_<state>``..."""
        names = [self.ir.update.name, *(s.name for s in self.ir.state)]
        return tuple(sympy.Symbol(f"ct_{n}", real=True) for n in names)

    @cached_property
    def tangent_symbols(self) -> tuple[sympy.Symbol, ...]:
        """One tangent symbol per differentiable input: ``dt_<tensor input>``, ``dt_<hyper>``."""
        return tuple(
            sympy.Symbol(f"dt_{x.name}", real=True)
            for x in (*self.ir.tensor_inputs, *self.ir.hypers)
        )

    @cached_property
    def forward_source(self) -> str:
        """Python source of the per-element forward ``(tensors..., scalars...) -> outputs``."""
        ir = self.ir
        return emit_function(
            f"{_identifier(ir.name)}_forward",
            [*ir.tensor_inputs, *ir.scalar_inputs],
            [OutputSpec(expr) for expr in ir.outputs],
            set(ir.tensor_inputs),
            like=ir.update,
        )

    @cached_property
    def forward(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """The per-element forward as a Python function over torch ops."""
        return _compile_source(self.forward_source, f"{self.name}.forward")

    def vjp_expressions(self, variant: Variant) -> list[sympy.Expr | None]:
        """The cotangent expression of each input (None where no gradient is needed or it is 0)."""
        ir = self.ir
        cotangents = [
            ct if present else None
            for ct, present in zip(self.cotangent_symbols, variant.has_cotangent, strict=True)
        ]
        wrt = [*ir.tensor_inputs, *ir.hypers]
        wanted = [x for x, need in zip(wrt, variant.needs_grad, strict=True) if need]
        values = dict(zip(wanted, diff.vjp(ir.outputs, cotangents, wanted), strict=True))
        return [None if values.get(x, 0) == 0 else values[x] for x in wrt]

    def vjp(self, variant: Variant) -> Callable[..., tuple[torch.Tensor | None, ...]]:
        """The per-element VJP ``(cotangents..., tensors..., scalars...) -> input cotangents``.

        Absent cotangents are passed as None and not read; the result has one entry per tensor
        input then per hyper-parameter (summed over elements), None where not needed or zero.
        """
        return self._vjp(variant)[1]

    def _vjp(self, variant: Variant) -> tuple[str, Callable[..., tuple[torch.Tensor | None, ...]]]:
        if variant not in self._vjp_cache:
            ir = self.ir
            n_tensor = len(ir.tensor_inputs)
            wrt = [*ir.tensor_inputs, *ir.hypers]
            outputs = [
                OutputSpec(expr, reduce_to=x if i >= n_tensor else None)
                for i, (x, expr) in enumerate(zip(wrt, self.vjp_expressions(variant), strict=True))
            ]
            source = emit_function(
                f"{_identifier(ir.name)}_vjp",
                [*self.cotangent_symbols, *ir.tensor_inputs, *ir.scalar_inputs],
                outputs,
                set(ir.tensor_inputs) | set(self.cotangent_symbols),
                like=ir.update,
            )
            self._vjp_cache[variant] = (source, _compile_source(source, f"{self.name}.vjp"))
        return self._vjp_cache[variant]

    @cached_property
    def full_variant(self) -> Variant:
        """Every input's gradient from every output's cotangent: what a traced backward runs.

        Inside a ``torch.compile`` region the backward is traced once for all steps, so it
        computes every cotangent (the compiler drops the unused ones) instead of choosing a
        variant per call, which would need Python decisions and new code at trace time.
        """
        ir = self.ir
        n_in = len(ir.tensor_inputs) + len(ir.hypers)
        return Variant((True,) * n_in, (True,) * len(ir.outputs))

    def prepare_for_tracing(self) -> None:
        """Build the forward and :attr:`full_variant`'s VJP now (Dynamo cannot trace that)."""
        self.forward  # noqa: B018 - a cached property, built on first access
        self.vjp(self.full_variant)

    def jvp_source(self, has_tangent: tuple[bool, ...]) -> str:
        """Python source of the per-element JVP for inputs with ``has_tangent``.

        ``has_tangent`` has one flag per tensor input then per hyper-parameter. The function
        takes ``(tangents..., tensors..., scalars...)`` (absent tangents passed as None, not
        read) and returns one tangent per output, None where it is identically zero.
        """
        ir = self.ir
        tangents = [
            t if present else None
            for t, present in zip(self.tangent_symbols, has_tangent, strict=True)
        ]
        exprs = diff.jvp(ir.outputs, tangents, [*ir.tensor_inputs, *ir.hypers])
        n_tensor = len(ir.tensor_inputs)
        return emit_function(
            f"{_identifier(ir.name)}_jvp",
            [*self.tangent_symbols, *ir.tensor_inputs, *ir.scalar_inputs],
            [OutputSpec(None if e == 0 else e) for e in exprs],
            set(ir.tensor_inputs) | set(self.tangent_symbols[:n_tensor]),
            like=ir.update,
        )

    def jvp(self, has_tangent: tuple[bool, ...]) -> Callable[..., tuple[torch.Tensor | None, ...]]:
        """The per-element JVP (see :meth:`jvp_source`), built once per ``has_tangent``."""
        if has_tangent not in self._jvp_cache:
            self._jvp_cache[has_tangent] = _compile_source(
                self.jvp_source(has_tangent), f"{self.name}.jvp"
            )
        return self._jvp_cache[has_tangent]


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name)
    return cleaned if cleaned[:1].isalpha() else f"rule_{cleaned}"


_counter = iter(range(1 << 62))


def _compile_source(source: str, label: str) -> Callable[..., Any]:
    """Exec generated source; register it with linecache so tracebacks and Dynamo show it."""
    filename = f"<optcompile:{label}:{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, object] = {"_rt": runtime}
    exec(compile(source, filename, "exec"), namespace)
    (fn,) = (v for k, v in namespace.items() if k != "_rt" and callable(v) and k != "__builtins__")
    return fn
