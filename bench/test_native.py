"""The native C++ Adam against Inductor and eager: fused update and VJP, one thread.

The kernel is ``optcompile.adam``'s (``scale_by_adam`` then ``-lr``, fused), run through each
backend's multi-tensor forward and VJP on one float32 leaf of 1M and 5M parameters. The VJP
returns the gradients of g, mu, nu and lr from all three cotangents (what an unrolled meta-step
asks for). Inductor compiles outside the timing (about 10 s per graph in a cold cache).
"""

import pytest
import torch
from _report import add_row

import optcompile
from optcompile.lowering.backends import get_backend, native_ops
from optcompile.lowering.kernel import Variant

SIZES = {"1M": 1_000_000, "5M": 5_000_000}
# Gradients of g, mu, nu and lr (not of b1, b2, eps, eps_root); cotangents of all 3 outputs.
VJP = Variant((True, True, True, False, False, False, False, True), (True, True, True))


@pytest.fixture(scope="module", autouse=True)
def _built():
    native_ops.build()


def _inputs(n: int):
    kernel = optcompile.adam(lr=torch.tensor(1e-3, dtype=torch.float64)).units[0].kernel
    gen = torch.Generator().manual_seed(0)
    g, mu = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    nu = torch.rand(n, generator=gen)
    cotangents = [[torch.randn(n, generator=gen)] for _ in range(3)]
    # b1, b2, eps, eps_root, lr, count
    scalars = [torch.tensor(v, dtype=torch.float64) for v in (0.9, 0.999, 1e-8, 0.0, 1e-3, 3.0)]
    return kernel, [[g], [mu], [nu]], cotangents, scalars


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("backend", ["native", "inductor", "eager"])
@pytest.mark.parametrize("direction", ["update", "vjp"])
def test_native_adam(benchmark, size, backend, direction):
    n = SIZES[size]
    kernel, tensors, cotangents, scalars = _inputs(n)
    impl = get_backend(backend)
    if direction == "update":
        forward = impl.forward(kernel)

        def call():
            return forward(tensors, scalars)
    else:
        vjp = impl.vjp(kernel)

        def call():
            return vjp(VJP, cotangents, tensors, scalars)

    with torch.no_grad():
        call()  # compile (Inductor) and load (native) outside the timing
        benchmark.pedantic(call, rounds=15, iterations=1, warmup_rounds=2)
    add_row(
        "native",
        variant=f"{backend}-{direction}",
        params=n,
        ms=benchmark.stats.stats.median * 1e3,
    )
