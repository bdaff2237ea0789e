"""Every alias on the Inductor backend equals eager: updates, states and meta-gradients.

One test per alias, float64 (float32 for Adam and SGD too), two differentiable steps from a
loss whose gradient depends on the parameters, then a meta-gradient through both steps with
respect to the initial parameters and a learnable learning rate. About 20 graphs in all
(marker ``compile``): a few seconds each in an empty cache, milliseconds with a warm one.
"""

from __future__ import annotations

import pytest
import torch

import optcompile
from optcompile.lowering import backends

ALIASES = {
    "sgd": lambda lr, b: optcompile.sgd(lr, momentum=0.9, nesterov=True, backend=b),
    "adam": lambda lr, b: optcompile.adam(lr, weight_decay=0.01, backend=b),
    "adamw": lambda lr, b: optcompile.adamw(lr, backend=b),
    "adamax": lambda lr, b: optcompile.adamax(lr, backend=b),
    "adagrad": lambda lr, b: optcompile.adagrad(lr, lr_decay=0.01, backend=b),
    "adadelta": lambda lr, b: optcompile.adadelta(lr, backend=b),
    "radam": lambda lr, b: optcompile.radam(lr, backend=b),
    "rmsprop": lambda lr, b: optcompile.rmsprop(lr, momentum=0.5, centered=True, backend=b),
}
CASES = [(name, torch.float64) for name in ALIASES] + [
    ("adam", torch.float32),
    ("sgd", torch.float32),
]
TOL = {torch.float32: {"rtol": 2e-5, "atol": 1e-6}, torch.float64: {"rtol": 1e-10, "atol": 1e-13}}


@pytest.fixture(autouse=True)
def _needs_inductor(monkeypatch):
    monkeypatch.setattr(backends, "_warned", set())
    reason = backends.get_backend("inductor").supports(
        optcompile.transform.scale(1.0).kernel, torch.device("cpu")
    )
    if reason is not None:
        pytest.skip(f"Inductor is not available here: {reason}")


def _run(name: str, backend: str, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.randn(4, 3, generator=generator, dtype=dtype).requires_grad_(),
        torch.randn(5, generator=generator, dtype=dtype).requires_grad_(),
    ]
    lr = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    tx = ALIASES[name](lr, backend)
    state = tx.init(params)
    current = params
    for _ in range(2):
        loss = sum(((p**2).sum() - 1.0) ** 2 for p in current)
        grads = torch.autograd.grad(loss, current, create_graph=True)
        current, state = optcompile.apply_transform(tx, grads, state, current, inplace=False)
    outer = sum((p**3).sum() for p in current)
    meta = torch.autograd.grad(outer, [*params, lr])
    return current, meta


@pytest.mark.compile
@pytest.mark.parametrize("name,dtype", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
def test_inductor_equals_eager(name, dtype):
    compiled, compiled_meta = _run(name, "inductor", dtype)
    eager, eager_meta = _run(name, "eager", dtype)
    for got, want in zip([*compiled, *compiled_meta], [*eager, *eager_meta], strict=True):
        torch.testing.assert_close(got, want, **TOL[dtype])
    assert optcompile.stats()["inductor"]["steps"] > 0
