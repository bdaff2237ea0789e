"""Bad declarations and bad values: a clear error at declaration or construction, naming it."""

import math

import pytest
import torch

import optcompile
from optcompile import HyperparameterError, RuleError, sym


def _declare(fn, **kwargs):
    return optcompile.rule(**kwargs)(fn)


def wrong_return_shape(g, nu, *, decay=0.9):
    return g * decay


def wrong_state_count(g, nu, *, decay=0.9):
    return g, (nu, nu)


def state_not_a_parameter(g, *, decay=0.9):
    return g, ()


def hyper_without_default(g, *, decay):
    return g * decay, ()


def uses_math_sqrt(g, *, eps=1e-8):
    return g / (math.sqrt(g) + eps), ()


def uses_torch(g, *, eps=1e-8):
    return torch.sqrt(g), ()


def uses_unsupported_sympy(g, *, w=1.0):
    import sympy

    return sympy.sin(w * g), ()


def fractional_power(g, *, eps=1e-8):
    return g**0.5 + eps, ()


def string_default(g, *, mode="fast"):
    return g, ()


def python_equality(g, *, count):
    return sym.where(count == 1, g, 2 * g), ()


DECLARATION_ERRORS = [
    (wrong_return_shape, {"state": ("nu",)}, r"must return \(new_update, \(new_state_1"),
    (wrong_state_count, {"state": ("nu",)}, r"with 1 state value"),
    (state_not_a_parameter, {"state": ("nu",)}, r"state name 'nu' is not a positional parameter"),
    (hyper_without_default, {}, r"hyper-parameter 'decay' has no default"),
    (uses_math_sqrt, {}, r"use the functions of optcompile\.sym"),
    (uses_torch, {}, r"use the functions of optcompile\.sym"),
    (uses_unsupported_sympy, {}, r"uses sin .*cannot lower"),
    (fractional_power, {}, r"fractional power .*sym\.sqrt"),
    (string_default, {}, r"'mode' must default to a real number"),
]


@pytest.mark.parametrize(
    "fn,kwargs,match", DECLARATION_ERRORS, ids=lambda c: getattr(c, "__name__", "")
)
def test_bad_declaration_is_rejected_when_declared(fn, kwargs, match):
    with pytest.raises(RuleError, match=match):
        _declare(fn, **kwargs)


def test_python_equality_in_where_is_explained():
    with pytest.raises(TypeError, match=r"sym\.eq\(count, 1\)"):
        _declare(python_equality)


def test_domain_of_declared_default_is_checked():
    def rule_fn(g, *, decay=1.5):
        return g * decay, ()

    with pytest.raises(HyperparameterError, match=r"decay=1\.5 .*\[0, 1\)"):
        _declare(rule_fn, domains={"decay": "[0, 1)"})


def test_domain_naming_unknown_hyper_is_rejected():
    def rule_fn(g, *, decay=0.5):
        return g * decay, ()

    with pytest.raises(RuleError, match=r"domains= names 'rate'"):
        _declare(rule_fn, domains={"rate": ">= 0"})


@optcompile.rule(state=("nu",), domains={"decay": "[0, 1)", "eps": ">= 0"})
def scale_by_rms(g, nu, *, decay=0.9, eps=1e-8):
    """RMS scaling (Tieleman & Hinton, 2012)."""
    nu = decay * nu + (1 - decay) * g**2
    return g / (sym.sqrt(nu) + eps), (nu,)


VALUE_ERRORS = [
    (lambda: scale_by_rms(decay=1.0), HyperparameterError, r"decay=1\.0 .*\[0, 1\)"),
    (lambda: scale_by_rms(decay=-0.1), HyperparameterError, r"decay=-0\.1"),
    (lambda: scale_by_rms(decay=torch.tensor(2.0)), HyperparameterError, r"decay=tensor\(2\.\)"),
    (lambda: scale_by_rms(rate=0.1), TypeError, r"unexpected hyper-parameter 'rate'.*decay, eps"),
    (lambda: scale_by_rms(decay="0.9"), TypeError, r"decay='0\.9' must be a real number"),
    (lambda: scale_by_rms(decay=torch.ones(3)), TypeError, r"decay must be a floating 0-d"),
    (lambda: scale_by_rms(backend="gpu"), ValueError, r"backend='gpu' is not a backend"),
    (lambda: optcompile.sgd(lr=-0.1), HyperparameterError, r"lr=-0\.1 .*>= 0"),
    (lambda: optcompile.adam(betas=(1.0, 0.9)), HyperparameterError, r"betas\[0\]=1\.0 .*\[0, 1\)"),
    (lambda: optcompile.adam(betas=(0.9, -0.5)), HyperparameterError, r"betas\[1\]=-0\.5"),
    (lambda: optcompile.rmsprop(alpha=1.5), HyperparameterError, r"alpha=1\.5"),
    (lambda: optcompile.sgd(0.1, nesterov=True), ValueError, r"nesterov=True requires momentum"),
    (lambda: optcompile.adam(eps=-1.0), HyperparameterError, r"eps=-1\.0"),
]


@pytest.mark.parametrize("make,error,match", VALUE_ERRORS)
def test_bad_value_is_rejected_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_explain_shows_forward_backward_and_conventions():
    text = scale_by_rms.explain()
    assert "forward:" in text and "backward" in text
    assert "nu' = " in text and "dg = " in text and "ddecay = " in text
    assert "where(" in text  # the safe sqrt derivative
    assert "SafeSqrt:" in text
