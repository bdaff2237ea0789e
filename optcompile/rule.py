"""``@optcompile.rule``: declare an elementwise update rule once, get every backend and its VJP.

Example:
    >>> import optcompile
    >>> from optcompile import sym
    >>> @optcompile.rule(state=("nu",), domains={"decay": "[0, 1)", "eps": ">= 0"})
    ... def scale_by_rms(g, nu, *, decay=0.9, eps=1e-8):
    ...     '''RMS scaling (Tieleman & Hinton, 2012).'''
    ...     nu = decay * nu + (1 - decay) * g**2
    ...     return g / (sym.sqrt(nu) + eps), (nu,)
    >>> tx = scale_by_rms(decay=0.95)   # a GradientTransformation
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import sympy
import torch

from optcompile.base import EmptyState
from optcompile.errors import RuleError
from optcompile.fused import from_rule
from optcompile.leafstats import LeafStatistic
from optcompile.lowering.check import Domain, parse_domain
from optcompile.lowering.cse import eliminate_common_subexpressions
from optcompile.lowering.kernel import Kernel, Variant
from optcompile.lowering.safe import DERIVATIVES
from optcompile.lowering.trace import RuleIR, trace

__all__ = ["Rule", "rule", "explain_ir"]


class Rule:
    """A declared elementwise rule. Calling it with hyper-parameters gives a transform.

    Attributes:
        ir: the traced expressions.
        defaults: the hyper-parameters' default values.
        domains: the allowed domain of each hyper-parameter that declares one.
        init: the initial value of each state buffer, a number or a hyper-parameter's name.
        state_type: the NamedTuple class of this rule's state.
        stats: the per-leaf statistics the body reads, by name, in declaration order (see
            :mod:`optcompile.leafstats`).
    """

    def __init__(
        self,
        fn: Callable,
        *,
        state: tuple[str, ...] = (),
        init: Mapping[str, float | str] | None = None,
        domains: Mapping[str, str] | None = None,
        state_name: str | None = None,
        stats: Mapping[str, LeafStatistic] | None = None,
    ) -> None:
        if isinstance(state, str) or not all(isinstance(s, str) for s in state):
            raise RuleError(f"rule {fn.__name__}: state= must be a tuple of names, got {state!r}")
        self.stats: dict[str, LeafStatistic] = dict(stats or {})
        for name, value in self.stats.items():
            if not isinstance(value, LeafStatistic):
                raise RuleError(
                    f"rule {fn.__name__}: stats[{name!r}] must be an "
                    f"optcompile.leafstats.LeafStatistic, got {type(value).__name__}"
                )
        self.fn = fn
        self.ir: RuleIR = trace(fn, tuple(state), tuple(self.stats))
        self.kernel = Kernel(self.ir)
        self.name = self.ir.name
        self.defaults: dict[str, float] = {h.name: _default(fn, h.name) for h in self.ir.hypers}
        self.domains: dict[str, Domain] = {}
        for hyper, text in (domains or {}).items():
            if hyper not in self.defaults:
                raise RuleError(
                    f"rule {self.name}: domains= names {hyper!r}, not a hyper-parameter"
                )
            self.domains[hyper] = parse_domain(text)
            self.domains[hyper].validate(f"{self.name}: default {hyper}", self.defaults[hyper])
        self.init: dict[str, float | str] = dict(init or {})
        for buffer, value in self.init.items():
            if buffer not in state:
                raise RuleError(f"rule {self.name}: init= names {buffer!r}, not a state buffer")
            if isinstance(value, str) and value not in self.defaults:
                raise RuleError(
                    f"rule {self.name}: init[{buffer!r}]={value!r} is not a hyper-parameter"
                )
        self._state_name = state_name or _camel(self.name) + "State"
        self.state_type = self.state_type_for(bool(self.ir.counts))
        functools.update_wrapper(self, fn)

    def state_type_for(self, needs_count: bool) -> type:
        """The state NamedTuple: one field per buffer, plus ``count`` when ``needs_count``."""
        fields = tuple(s.name for s in self.ir.state) + (("count",) if needs_count else ())
        return _state_type(self._state_name, fields)

    def __call__(self, **hypers: Any) -> Any:
        """The :class:`~optcompile.fused.RuleTransformation` with these hyper-parameters.

        Each value may be a number, a 0-d tensor (``requires_grad=True`` gives a hypergradient)
        or a schedule ``count -> value``; the reserved ``backend=`` picks a backend.
        """
        return from_rule(self, **hypers)

    def explain(self) -> str:
        """The forward and the derived backward as readable formulas."""
        return explain_ir(self.kernel)

    def __reduce__(self) -> tuple:
        # A rule is pickled by reference (module + name), like a function: optimizers built from
        # rules declared at module level can be pickled and sent to other processes.
        return (_rule_by_reference, (self.fn.__module__, self.fn.__qualname__))

    def __repr__(self) -> str:
        inputs = [s.name for s in self.ir.tensor_inputs]
        hypers = [f"{k}={v}" for k, v in self.defaults.items()]
        return f"<optcompile.rule {self.name}({', '.join(inputs + hypers)})>"


def rule(
    fn: Callable | None = None,
    *,
    state: tuple[str, ...] = (),
    init: Mapping[str, float | str] | None = None,
    domains: Mapping[str, str] | None = None,
    state_name: str | None = None,
    stats: Mapping[str, LeafStatistic] | None = None,
) -> Any:
    """Declare an elementwise update rule (usable as ``@rule`` or ``@rule(state=(...))``).

    Args:
        fn: ``f(update, *state, *, hyper=default, ..., params, count) -> (new_update, new_state)``.
        state: the names of the state buffers, in the order of ``fn``'s positional parameters.
        init: initial values of state buffers (default 0): a number or a hyper-parameter name.
        domains: allowed values per hyper-parameter, e.g. ``{"decay": "[0, 1)", "eps": ">= 0"}``.
        state_name: the name of the state NamedTuple (default ``<CamelName>State``).
        stats: per-leaf statistics the body reads as keyword-only inputs without default,
            e.g. ``{"update_norm": UPDATE_NORM}`` (see :mod:`optcompile.leafstats`): computed
            per parameter tensor before the kernel and broadcast to its shape.

    Raises:
        RuleError: the declaration breaks a convention (raised here, at declaration).
    """

    def wrap(f: Callable) -> Rule:
        return Rule(
            f, state=tuple(state), init=init, domains=domains, state_name=state_name, stats=stats
        )

    return wrap if fn is None else wrap(fn)


def _rule_by_reference(module: str, qualname: str) -> Rule:
    import importlib

    value: Any = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    if not isinstance(value, Rule):
        raise TypeError(f"{module}.{qualname} is not an optcompile rule; it cannot be unpickled")
    return value


def _default(fn: Callable, name: str) -> float:
    return inspect.signature(fn).parameters[name].default


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"_+", name) if part)


@functools.cache
def _state_type(name: str, fields: tuple[str, ...]) -> type:
    """The state NamedTuple ``name(fields...)``, one class per (name, fields).

    Its qualified name encodes the fields (``ScaleByAdamState__mu__nu__count``) and this module
    resolves such names on demand (:func:`__getattr__`), so states pickle (``torch.save``) and
    unpickle in a fresh process, whatever rules that process has declared so far.
    """
    if not fields:
        return EmptyState
    cls = NamedTuple(name, [(f, Any) for f in fields])  # type: ignore[misc]
    cls.__module__ = __name__
    cls.__qualname__ = "__".join((name, *fields))
    # A NamedTuple of tensors and numbers is safe to unpickle: torch.load's default
    # weights_only=True may rebuild it (see optcompile.serialization).
    torch.serialization.add_safe_globals([cls])
    return cls


def __getattr__(attribute: str) -> type:
    """Resolve a state class by its qualified name when unpickling (see :func:`_state_type`)."""
    name, *fields = attribute.split("__")
    if fields and name.endswith("State") and name.isidentifier():
        return _state_type(name, tuple(fields))
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def explain_ir(kernel: Kernel) -> str:
    """Readable forward and backward formulas of a kernel, with the safe rules they rely on."""
    ir = kernel.ir
    names = ["update", *(s.name + "'" for s in ir.state)]
    lines = [f"rule {ir.name}", "forward:"]
    lines += _formulas(names, list(ir.outputs))
    n_tensor, n_hyper = len(ir.tensor_inputs), len(ir.hypers)
    variant = Variant((True,) * (n_tensor + n_hyper), (True,) * len(ir.outputs))
    grads = kernel.vjp_expressions(variant)
    wrt = [*ir.tensor_inputs, *ir.hypers]
    present = [
        (f"d{x.name}", g if g is not None else sympy.Integer(0))
        for x, g in zip(wrt, grads, strict=True)
    ]
    lines.append(
        "backward (VJP; ct_* are the incoming cotangents; hyper-parameter rows are summed over "
        "elements):"
    )
    lines += _formulas([n for n, _ in present], [g for _, g in present])
    used = {type(node) for expr in ir.outputs for node in sympy.preorder_traversal(expr)}
    notes = [row for row in DERIVATIVES if row.head in used]
    if notes:
        lines.append("derivative conventions used:")
        lines += [f"  {row.head.__name__}: {row.convention}" for row in notes]
    return "\n".join(lines)


def _formulas(names: list[str], exprs: list[sympy.Expr]) -> list[str]:
    assignments, reduced = eliminate_common_subexpressions(exprs)
    lines = [f"  {t} = {sympy.sstr(v)}" for t, v in assignments]
    lines += [f"  {n} = {sympy.sstr(e)}" for n, e in zip(names, reduced, strict=True)]
    return lines
