"""``auto`` never compiles small steps per shape (it could not pay off): Adam runs on the native
kernels (built once per machine), other rules and toy-sized steps eagerly; named backends
compile."""

from __future__ import annotations

import pytest
import torch

import optcompile
from optcompile.lowering import backends


@pytest.fixture(autouse=True)
def _threshold(monkeypatch):
    monkeypatch.setattr(backends, "_auto_compile_threshold", 100)
    monkeypatch.setattr(backends, "_warned", set())
    optcompile.reset_stats()


def _step(backend: str | None, n: int) -> None:
    tx = optcompile.sgd(0.1, momentum=0.9, backend=backend)
    p = torch.ones(n)
    tx.update(torch.ones(n), tx.init(p), params=p)


def test_tiny_step_under_auto_runs_eagerly_without_a_warning():
    _step("auto", 50)
    report = optcompile.stats()
    assert report["eager"]["steps"] == 1
    assert report["inductor"]["steps"] == report["inductor"]["graphs"] == 0
    assert report["inductor"]["fallbacks"] == []


@pytest.mark.compile
def test_step_at_the_threshold_and_named_backends_are_compiled():
    if backends.get_backend("inductor").supports(
        optcompile.transform.scale(1.0).kernel, torch.device("cpu")
    ):
        pytest.skip("Inductor is not available here")
    _step("auto", 100)
    _step("inductor", 50)
    report = optcompile.stats()
    assert report["inductor"]["steps"] == 2 and report["eager"]["steps"] == 0


@pytest.mark.parametrize("native", [True, False])
def test_small_adam_step_under_auto_runs_native_when_it_can_else_eagerly(monkeypatch, native):
    from optcompile.lowering.backends import native_ops

    if native and not native_ops.is_available("cpu"):
        pytest.skip("the native Adam cannot be built here")
    if not native:  # as on a machine without a C++ compiler
        monkeypatch.setattr(native_ops, "is_available", lambda device="cpu": False)
    monkeypatch.setattr(backends, "_auto_compile_threshold", 2**15)
    tx = optcompile.adam(1e-3, backend="auto")
    for n, on_native in ((2**13, native), (50, False)):  # a toy-sized step: the eager reference
        optcompile.reset_stats()
        p = torch.ones(n, requires_grad=True)
        new_p, _ = optcompile.apply_transform(tx, torch.ones(n), tx.init(p), p, inplace=False)
        report = optcompile.stats()
        assert (report["native"]["steps"], report["eager"]["steps"]) == (
            (1, 0) if on_native else (0, 1)
        )
        assert report["inductor"]["graphs"] == 0 and report["inductor"]["fallbacks"] == []
        torch.testing.assert_close(new_p, torch.full((n,), 1 - 1e-3))  # Adam's first step: -lr


def test_threshold_is_validated():
    with pytest.raises(ValueError, match=r"elements=-1 must be an integer >= 0"):
        backends.set_auto_compile_threshold(-1)
