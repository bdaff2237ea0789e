"""The VJP contract, property-tested: finite wherever the forward is finite.

For every built-in rule, hypothesis draws inputs that mix exact zeros (zero gradients, zero
state: where autograd's chain rule meets sqrt at 0) with ordinary values, a step count and
cotangents; at every element whose forward outputs are all finite, every derived cotangent must
be finite too.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optcompile.lowering.kernel import Variant
from optcompile.rules import registry

RULES = list(registry().values())
N = 6
# Second-moment buffers are sums of squares: never negative in a real run.
NON_NEGATIVE = {"nu", "sum_of_squares"}

values = st.one_of(st.just(0.0), st.floats(-10.0, 10.0, allow_nan=False, width=64))
vectors = st.lists(values, min_size=N, max_size=N)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), count=st.integers(1, 12))
def test_vjp_is_finite_wherever_the_forward_is(rule, data, count):
    kernel = rule.kernel
    ir = kernel.ir
    tensors = []
    for symbol in ir.tensor_inputs:
        x = torch.tensor(data.draw(vectors), dtype=torch.float64)
        tensors.append(x.abs() if symbol.name in NON_NEGATIVE else x)
    scalars = [torch.tensor(float(rule.defaults[h.name]), dtype=torch.float64) for h in ir.hypers]
    if ir.counts:
        scalars.append(torch.tensor(float(count), dtype=torch.float64))
    outputs = kernel.forward(*tensors, *scalars)
    cotangents = [torch.tensor(data.draw(vectors), dtype=torch.float64) for _ in outputs]
    variant = Variant((True,) * (len(ir.tensor_inputs) + len(ir.hypers)), (True,) * len(ir.outputs))
    grads = kernel.vjp(variant)(*cotangents, *tensors, *scalars)
    finite = torch.stack([torch.isfinite(o) for o in outputs]).all(dim=0)
    for grad in grads[: len(ir.tensor_inputs)]:
        if grad is not None:
            assert torch.isfinite(grad[finite]).all(), (grad, finite)
    if finite.all():
        for grad in grads[len(ir.tensor_inputs) :]:
            assert grad is None or torch.isfinite(grad).all()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_variant_equals_the_full_vjp_in_float64(rule):
    """A VJP built for some inputs and cotangents gives exactly what the full VJP gives there.

    Variants are separate emitted functions; AdaMax's tensor-only variant multiplied a float32
    tie mask by a 0-d float64 hyper-parameter and so ran at float32 precision (1e-8 relative
    error in a float64 meta-gradient) while the full variant did not.
    """
    kernel = rule.kernel
    ir = kernel.ir
    generator = torch.Generator().manual_seed(0)
    tensors = [
        torch.rand(N, generator=generator, dtype=torch.float64) + 0.1 for _ in ir.tensor_inputs
    ]
    scalars = [torch.tensor(float(rule.defaults[h.name]), dtype=torch.float64) for h in ir.hypers]
    if ir.counts:
        scalars.append(torch.tensor(3.0, dtype=torch.float64))
    cotangents = [torch.randn(N, generator=generator, dtype=torch.float64) for _ in ir.outputs]
    n_in = len(ir.tensor_inputs) + len(ir.hypers)
    full = kernel.vjp(kernel.full_variant)(*cotangents, *tensors, *scalars)
    for k in range(n_in):
        only = Variant(tuple(j == k for j in range(n_in)), kernel.full_variant.has_cotangent)
        (got,) = [
            g for j, g in enumerate(kernel.vjp(only)(*cotangents, *tensors, *scalars)) if j == k
        ]
        if full[k] is None:
            assert got is None
            continue
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, full[k], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_the_flat_eager_path_equals_leaf_by_leaf(rule):
    """The eager backend's one call over concatenated leaves == one call per leaf, no aliasing.

    Random states may put a rule outside its domain (a negative variance): NaN must then appear
    at the same places on both paths.
    """
    from optcompile.lowering.backends.eager import (
        run_forward,
        run_forward_flat,
        run_vjp,
        run_vjp_flat,
    )

    kernel = rule.kernel
    ir = kernel.ir
    generator = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (5,), ()]
    lists = [
        [torch.rand(s, generator=generator, dtype=torch.float64) + 0.1 for s in shapes]
        for _ in ir.tensor_inputs
    ]
    scalars = [torch.tensor(float(rule.defaults[h.name]), dtype=torch.float64) for h in ir.hypers]
    if ir.counts:
        scalars.append(torch.tensor(2.0, dtype=torch.float64))
    flat, leafwise = run_forward_flat(kernel, lists, scalars), run_forward(kernel, lists, scalars)
    for got, want in zip(flat, leafwise, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=1e-15, atol=0, equal_nan=True)
    # No two outputs share memory (momentum returns its trace as update and as state).
    storages = [t.untyped_storage().data_ptr() for t in (column[0] for column in flat)]
    assert len(set(storages)) == len(storages)
    cots = [[torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
            for _ in ir.outputs]  # fmt: skip
    variant = kernel.full_variant
    got_t, got_s = run_vjp_flat(kernel, variant, cots, lists, scalars)
    want_t, want_s = run_vjp(kernel, variant, cots, lists, scalars)
    for got, want in zip(got_t, want_t, strict=True):
        if want is None:
            assert got is None
            continue
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-14, atol=1e-15, equal_nan=True)
    for g, w in zip(got_s, want_s, strict=True):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=1e-13, atol=1e-14, equal_nan=True)
