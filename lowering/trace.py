"""Tracing: evaluate a rule's Python body once on sympy symbols to get its expressions.

Conventions of a rule function ``f(update, *state, *, hyper=default, ..., params, count)``:

* the first positional parameter is the incoming update (a gradient, or the previous
  transform's output);
* the remaining positional parameters are the state buffers, named exactly as in ``state=``;
* keyword-only parameters are hyper-parameters with numeric defaults, except the reserved
  ``params`` (the current parameter, elementwise) and ``count`` (the 1-based step, a scalar);
* the body returns ``(new_update, (new_state_1, ...))``.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import sympy

from optcompile.lowering.errors import RuleError

__all__ = ["RuleIR", "trace", "RESERVED"]

RESERVED = ("params", "count")


@dataclass(frozen=True)
class RuleIR:
    """A traced rule: its inputs by kind and one expression per output.

    Attributes:
        name: the rule's name (for messages and generated code).
        update: the symbol of the incoming update.
        state: the symbols of the state buffers, in declaration order.
        hypers: the symbols of the hyper-parameters, in declaration order.
        params: the parameter symbol, or None when the rule does not read parameters.
        counts: the step-count symbols: none when the rule does not read ``count``, one for a
            declared rule, one per count-reading member for a fused chain (members whose
            states were reset separately are at different steps).
        outputs: the new update followed by the new value of each state buffer.
        stats: the per-leaf statistic symbols (a norm per parameter tensor, broadcast to its
            shape), in declaration order; per-element inputs after ``params``.
    """

    name: str
    update: sympy.Symbol
    state: tuple[sympy.Symbol, ...]
    hypers: tuple[sympy.Symbol, ...]
    params: sympy.Symbol | None
    counts: tuple[sympy.Symbol, ...]
    outputs: tuple[sympy.Expr, ...]
    stats: tuple[sympy.Symbol, ...] = ()

    @property
    def tensor_inputs(self) -> tuple[sympy.Symbol, ...]:
        """The per-element inputs: update, state buffers, params if used, then statistics."""
        params = (self.params,) if self.params is not None else ()
        return (self.update, *self.state, *params, *self.stats)

    @property
    def scalar_inputs(self) -> tuple[sympy.Symbol, ...]:
        """The scalar inputs: hyper-parameters, then the step counts."""
        return (*self.hypers, *self.counts)


def _symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def signature_of(
    fn: Callable[..., object], state: tuple[str, ...], stats: tuple[str, ...] = ()
) -> tuple[str, dict[str, object], bool, bool]:
    """Check ``fn``'s signature against the conventions; return its parts.

    Returns:
        ``(update_name, hyper_defaults, uses_params, uses_count)``.

    Raises:
        RuleError: naming the offending parameter.
    """
    name = getattr(fn, "__name__", repr(fn))
    sig = inspect.signature(fn)
    positional = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    keyword = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        raise RuleError(f"rule {name}: *args/**kwargs are not allowed; name every input")
    if not positional:
        raise RuleError(
            f"rule {name}: the first positional parameter must be the incoming update, "
            f"e.g. `def {name}(g, ...)`"
        )
    for s in state:
        if s not in positional[1:]:
            raise RuleError(
                f"rule {name}: state name {s!r} is not a positional parameter of the rule; "
                f"positional parameters after the update are {positional[1:]}"
            )
    if tuple(positional[1:]) != tuple(state):
        raise RuleError(
            f"rule {name}: the positional parameters after the update must be exactly the "
            f"state buffers in order, state={tuple(state)}, got {tuple(positional[1:])}"
        )
    keyword_names = {p.name for p in keyword}
    for s in stats:
        if s in RESERVED or s not in keyword_names:
            raise RuleError(
                f"rule {name}: statistic {s!r} must be a keyword-only parameter of the rule "
                f"(after `*`), not one of {RESERVED}"
            )
    hypers: dict[str, object] = {}
    for p in keyword:
        if p.name in RESERVED or p.name in stats:
            continue
        if p.default is p.empty:
            raise RuleError(
                f"rule {name}: hyper-parameter {p.name!r} has no default; give it one "
                f"(e.g. `*, {p.name}=0.9`)"
            )
        if not isinstance(p.default, numbers.Real) or isinstance(p.default, bool):
            raise RuleError(
                f"rule {name}: hyper-parameter {p.name!r} must default to a real number, "
                f"got {p.default!r}"
            )
        hypers[p.name] = p.default
    names = {p.name for p in keyword}
    return positional[0], hypers, "params" in names, "count" in names


def trace(fn: Callable[..., object], state: tuple[str, ...], stats: tuple[str, ...] = ()) -> RuleIR:
    """Evaluate ``fn`` on symbols and return its :class:`RuleIR`.

    Raises:
        RuleError: the signature breaks the conventions, the body calls something that does not
            work on symbols (``math.sqrt``, a torch function), or the return value has the
            wrong shape.
    """
    name = getattr(fn, "__name__", repr(fn))
    update_name, hyper_defaults, uses_params, uses_count = signature_of(fn, state, stats)
    update = _symbol(update_name)
    state_syms = tuple(_symbol(s) for s in state)
    hyper_syms = {h: _symbol(h) for h in hyper_defaults}
    kwargs: dict[str, sympy.Symbol] = dict(hyper_syms)
    params = _symbol("params") if uses_params else None
    count = _symbol("count") if uses_count else None
    if params is not None:
        kwargs["params"] = params
    if count is not None:
        kwargs["count"] = count
    stat_syms = tuple(_symbol(s) for s in stats)
    kwargs.update(zip(stats, stat_syms, strict=True))
    try:
        result = fn(update, *state_syms, **kwargs)
    except TypeError as err:
        raise RuleError(
            f"rule {name}: its body failed on symbols ({err}). A rule body is plain arithmetic: "
            f"use the functions of optcompile.sym (sym.sqrt, sym.abs, sym.maximum, sym.where, "
            f"...), not math.* or torch.* functions"
        ) from err
    outputs = _check_result_shape(name, result, len(state))
    return RuleIR(
        name=name,
        update=update,
        state=state_syms,
        hypers=tuple(hyper_syms.values()),
        params=params,
        counts=() if count is None else (count,),
        outputs=outputs,
        stats=stat_syms,
    )


def _check_result_shape(name: str, result: object, n_state: int) -> tuple[sympy.Expr, ...]:
    shape_help = (
        f"rule {name} must return (new_update, (new_state_1, ...)) with {n_state} state value(s)"
    )
    if not isinstance(result, tuple) or len(result) != 2:
        raise RuleError(f"{shape_help}; got {type(result).__name__} {result!r}")
    new_update, new_state = result
    if not isinstance(new_state, tuple | list) or len(new_state) != n_state:
        raise RuleError(f"{shape_help}; the second item is {new_state!r}")
    outputs = []
    for i, value in enumerate((new_update, *new_state)):
        try:
            expr = sympy.sympify(value, strict=True)
        except (sympy.SympifyError, TypeError) as err:
            raise RuleError(f"{shape_help}; output {i} is not an expression: {value!r}") from err
        if not isinstance(expr, sympy.Expr):
            raise RuleError(f"{shape_help}; output {i} is not an expression: {value!r}")
        outputs.append(expr)
    return tuple(outputs)
