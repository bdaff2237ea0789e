"""Golden strings of the torch emitter: what the generated code looks like, by construct."""

from __future__ import annotations

import sympy
import torch

import optcompile
from optcompile import sym
from optcompile.lowering.emit.torch import print_expr

x, y, c = (sympy.Symbol(n, real=True) for n in ("x", "y", "c"))
NAMES = {x: "x", y: "y", c: "c"}


def test_arithmetic_prints_divisions_as_divisions():
    assert print_expr(x / (y + 1), NAMES) == "(x / (1 + y))"
    assert print_expr(-x * y, NAMES) == "(-(x * y))"
    assert print_expr(x**2, NAMES) == "(x * x)"
    assert print_expr(x**-3, NAMES) == "(1.0 / x ** 3)"
    assert print_expr(x**c, NAMES) == "(x ** c)"
    assert print_expr(x / 2, NAMES) == "(x / 2.0)"


def test_negative_terms_are_subtracted_and_scalars_combined_before_tensors():
    tensors = frozenset({x, y})
    assert print_expr(x - y, NAMES) == "(x - y)"
    assert print_expr(1 - c, NAMES) == "(1 - c)"
    assert print_expr(-x - y, NAMES) == "(-x - y)"
    # c * 2 is computed first: one pass over x instead of two
    assert print_expr(x * c * 2, NAMES, tensors) == "(2 * c * x)"
    assert print_expr(y - x * c, NAMES, tensors) == "(y - (c * x))"
    assert print_expr(x + c + 1, NAMES, tensors) == "(1 + c + x)"


def test_reordered_source_computes_the_same_values():
    @optcompile.rule
    def shifted(g, *, a=0.5, b=2.0, params):
        return params - a * g * b + (1 - a) - g, ()

    g, p = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a, b = torch.tensor(0.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    (out,) = shifted.kernel.forward(g, p, a, b)
    torch.testing.assert_close(out, p - 0.5 * g * 2.0 + 0.5 - g, rtol=0, atol=1e-15)


def test_functions_and_where_print_through_the_runtime_helpers():
    assert print_expr(sym.sqrt(x), NAMES) == "_rt.sqrt(x)"
    assert print_expr(sym.maximum(x, y), NAMES) == "_rt.maximum(x, y)"
    assert print_expr(sym.where(x > 0, x, y), NAMES) == "_rt.where((x > 0), x, y)"
    assert print_expr(sym.where(sym.eq(c, 1), x, y), NAMES) == "_rt.where((c == 1), x, y)"


def test_forward_source_of_a_rule_is_stable():
    @optcompile.rule(state=("nu",))
    def rms(g, nu, *, decay=0.9, eps=1e-8):
        nu = decay * nu + (1 - decay) * g**2
        return g / (sym.sqrt(nu) + eps), (nu,)

    assert rms.kernel.forward_source == (
        "def rms_forward(g, nu, decay, eps):\n"
        "    _t0 = ((decay * nu) + ((1 - decay) * (g * g)))\n"
        "    return ((g / (eps + _rt.sqrt(_t0))), _t0,)\n"
    )


def test_scalar_denominators_become_one_reciprocal_per_call():
    @optcompile.rule
    def bias_corrected(g, *, b=0.9, count):
        return g / (1 - b**count), ()

    source = bias_corrected.kernel.forward_source
    assert "(1.0 / (1 - (b ** count)))" in source and "g / " not in source
    out = bias_corrected.kernel.forward(
        torch.tensor([1.0, 2.0]), torch.tensor(0.5), torch.tensor(1.0)
    )
    torch.testing.assert_close(out[0], torch.tensor([2.0, 4.0]))
