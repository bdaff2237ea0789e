"""The native backend inside optimizers: ``use_accelerated_op=True`` equals eager, meta-gradients
included, and ``auto`` without Inductor picks native for Adam and eager for the rest, loudly.

No test here compiles with Inductor: units that name no backend (weight decay) run on the
process default, set to eager, and the ``auto`` test disables Inductor and fails any compile.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import optcompile
from optcompile.lowering import backends
from optcompile.lowering.backends.inductor import DISABLE_ENV_VAR, simulate_failure
from optcompile.lowering.stats import reset_stats, stats

if shutil.which("c++") is None:
    pytest.skip(
        "no C++ compiler (c++) on PATH to build the native kernels", allow_module_level=True
    )

K = 3  # inner steps
TOL = {"rtol": 1e-10, "atol": 1e-13}


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    # Each test starts with zero counters, no record of warnings already given (so "warns
    # once" holds whatever ran before) and eager as the default backend.
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "_auto_compile_threshold", 0)  # tiny test tensors
    reset_stats()
    previous = backends.default_backend()
    backends.set_default_backend("eager")
    yield
    backends.set_default_backend(previous)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    return x, x.sum(dim=1, keepdim=True).sin()


def _loss(net: nn.Module, seed: int) -> torch.Tensor:
    x, y = _batch(seed)
    return ((net(x) - y) ** 2).mean()


def _unrolled(optimizer: type, weight_decay: float, **backend: object):
    """K differentiable steps; the final parameters and d(outer loss)/d(lr, initial weights)."""
    net = _mlp()
    initial = list(net.parameters())
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    inner = optimizer(net, lr=lr, weight_decay=weight_decay, **backend)
    for k in range(K):
        inner.step(_loss(net, seed=k))
    meta_grads = torch.autograd.grad(_loss(net, seed=K), [lr, *initial])
    return [p.detach() for p in net.parameters()], meta_grads


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("optimizer", [optcompile.MetaAdam, optcompile.MetaAdamW])
def test_accelerated_op_equals_eager(optimizer, weight_decay):
    params, meta_grads = _unrolled(optimizer, weight_decay, use_accelerated_op=True)
    counts = stats()
    # Adam ran natively, forward and backward, once per inner step (the falling back to another
    # backend would have warned, an error here).
    assert (counts["native"]["steps"], counts["native"]["vjp_calls"]) == (K, K)
    assert counts["native"]["fallbacks"] == []
    want_params, want_meta_grads = _unrolled(optimizer, weight_decay, backend="eager")
    assert len(meta_grads) == 1 + len(params)
    for got, want in zip([*params, *meta_grads], [*want_params, *want_meta_grads], strict=True):
        torch.testing.assert_close(got, want, **TOL)
    assert meta_grads[0].abs() > 0  # the meta-gradient is not trivially zero


def test_accelerated_op_available():
    assert optcompile.accelerated_op_available(torch.device("cpu"))
    if not torch.cuda.is_available():
        assert not optcompile.accelerated_op_available(torch.device("cuda"))


def _two_steps(tx: optcompile.GradientTransformation) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in [(5, 3), (7,)]]
    state = tx.init(params)
    outputs = []
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        updates, state = tx.update(grads, state, params=params, inplace=False)
        params = optcompile.apply_updates(params, updates, inplace=False)
        outputs += [*updates, *params]
    return outputs


def test_auto_without_inductor_picks_native_for_adam_and_eager_otherwise(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV_VAR, "1")
    adam = optcompile.adam(lr=0.1, backend="auto")
    sgd = optcompile.sgd(lr=0.1, momentum=0.9, backend="auto")  # not Adam: native declines
    adam_kernel, sgd_kernel = adam.units[0].kernel.name, sgd.units[0].kernel.name
    with (
        simulate_failure("compile", "Inductor must not compile here"),
        pytest.warns(RuntimeWarning) as record,
    ):
        got_adam, got_sgd = _two_steps(adam), _two_steps(sgd)
    # Once each fallback: Inductor -> native for Adam, Inductor -> eager for SGD. Native
    # declining a kernel that is not Adam is expected under auto: counted, not warned about.
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2, messages
    assert f"'inductor' cannot run {adam_kernel}" in messages[0]
    assert messages[0].endswith(f"disabled by {DISABLE_ENV_VAR}; using 'native'")
    assert f"'inductor' cannot run {sgd_kernel}" in messages[1]
    assert messages[1].endswith(f"disabled by {DISABLE_ENV_VAR}; using 'eager'")

    counts = stats()
    assert counts["native"]["steps"] == 2 and counts["eager"]["steps"] == 2
    assert counts["inductor"]["steps"] == counts["inductor"]["graphs"] == 0
    skipped_inductor = {
        (f["kernel"], f["reason"], f["count"]) for f in counts["inductor"]["fallbacks"]
    }
    reason = f"disabled by {DISABLE_ENV_VAR}"
    assert skipped_inductor == {(adam_kernel, reason, 2), (sgd_kernel, reason, 2)}
    (skipped_native,) = counts["native"]["fallbacks"]
    assert skipped_native["kernel"] == sgd_kernel and skipped_native["count"] == 2
    assert skipped_native["reason"].startswith("the native kernels cover Adam only")

    for got, want in [
        (got_adam, _two_steps(optcompile.adam(lr=0.1, backend="eager"))),
        (got_sgd, _two_steps(optcompile.sgd(lr=0.1, momentum=0.9, backend="eager"))),
    ]:
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **TOL)
