"""CUDA: Triton kernels from Inductor, the CUDA native Adam, and the seed's accelerated cell.

Run where a GPU is present (``pytest -m gpu``); skipped on CPU-only machines.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import optcompile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _two_steps(backend: str, device: str, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(0)
    params = [
        torch.randn(64, 33, generator=generator, dtype=dtype).to(device).requires_grad_(),
        torch.randn(7, generator=generator, dtype=dtype).to(device).requires_grad_(),
    ]
    lr = torch.tensor(0.01, dtype=dtype, device=device, requires_grad=True)
    tx = optcompile.adam(lr, weight_decay=0.01, backend=backend)
    state = tx.init(params)
    current = params
    for _ in range(2):
        loss = sum(((p**2).sum() - 1.0) ** 2 for p in current)
        grads = torch.autograd.grad(loss, current, create_graph=True)
        current, state = optcompile.apply_transform(tx, grads, state, current, inplace=False)
    outer = sum((p**3).sum() for p in current)
    return [t.cpu() for t in (*current, *torch.autograd.grad(outer, [*params, lr]))]


@pytest.mark.parametrize("backend", ["inductor", "native"])
def test_cuda_backend_equals_cpu_eager(backend):
    got = _two_steps(backend, "cuda")
    want = _two_steps("eager", "cpu")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert optcompile.stats()[backend]["steps"] > 0


def test_cuda_accelerated_op_available():
    assert optcompile.accelerated_op_available(torch.device("cuda"))
    assert optcompile.accelerated_op_available(0)


def test_seed_accelerated_cell_on_cuda():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(1.0), requires_grad=True)

        def forward(self, x):
            return self.a * (x**2)

    net = Net().to(device="cuda")
    x = nn.Parameter(torch.tensor(2.0, device="cuda"), requires_grad=True)
    optim = optcompile.MetaAdam(net, lr=1.0, moment_requires_grad=True, use_accelerated_op=True)
    optim.step(net(x))
    net(x).backward()
    assert torch.isfinite(x.grad).all()
