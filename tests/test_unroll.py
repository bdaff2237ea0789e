"""Memory-bounded unrolls: checkpointed and truncated meta-gradients against their references.

- Checkpointed (``checkpoint_every``) == the full unroll, float64 to 1e-10, for every built-in
  optimizer with its moments requiring grad, K not a multiple of k; on every backend; through
  ``MetaOptimizer`` (``meta_unroll``); with ``create_graph=True``.
- Truncated (``truncate``) == a hand-written truncated loop (no_grad, detach, then k steps).
- Memory, in a subprocess (``/proc`` peak RSS with one mapping per tensor): growth with K is
  linear for the full unroll, sublinear with ``"sqrt"`` checkpointing, flat without a graph.
- Bad options: errors that name the argument.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import optree
import pytest
import torch

import optcompile
from optcompile.unrolling import check_options, segment_length, unroll_options

TOL = {"rtol": 1e-10, "atol": 1e-12}
ALIASES = ["sgd", "adam", "adamw", "adamax", "adagrad", "adadelta", "radam", "rmsprop"]
# Hyper-parameters that give every optimizer a non-trivial state.
EXTRA = {"sgd": {"momentum": 0.9}, "rmsprop": {"momentum": 0.5, "centered": True}}


def _tx(name: str, backend: str = "eager", lr: float | torch.Tensor = 0.05):
    alias = getattr(optcompile, name)
    kwargs = dict(EXTRA.get(name, {}), backend=backend)
    if "moment_requires_grad" in inspect.signature(alias).parameters:
        kwargs["moment_requires_grad"] = True
    return alias(lr, **kwargs)


def _problem(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    params = (
        torch.randn(5, 4, generator=gen, dtype=dtype).requires_grad_(),
        torch.randn(4, 3, generator=gen, dtype=dtype).requires_grad_(),
    )
    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    batches = [(draw(8, 5), draw(8, 3)) for _ in range(7)]
    return params, batches


def _loss(params, batch):
    x, y = batch
    return ((torch.tanh(x @ params[0]) @ params[1] - y) ** 2).mean()


def _step_fn(tx):
    def step(params, state, batch):
        grads = torch.func.grad(_loss)(params, batch)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    return step


def _meta_grads(tx, **options):
    """Gradients of the outer loss w.r.t. the initial params and the initial moments."""
    params, batches = _problem()
    state = tx.init(params)
    moments = [t for t in optree.tree_leaves(state) if t.requires_grad]
    final, _ = optcompile.unroll(_step_fn(tx), params, state, batches, **options)
    return torch.autograd.grad(_loss(final, batches[0]), [*params, *moments]), len(moments)


@pytest.mark.parametrize("name", ALIASES)
def test_checkpointed_equals_full_unroll(name):
    tx = _tx(name)
    want, n_moments = _meta_grads(tx)
    got, _ = _meta_grads(tx, checkpoint_every=3)  # K = 7: segments of 3, 3, 1
    assert len(got) == len(want)
    # Initial moments are differentiated wherever the alias offers moment_requires_grad.
    offered = "moment_requires_grad" in inspect.signature(getattr(optcompile, name)).parameters
    assert (n_moments > 0) == offered
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_sqrt_segments():
    assert [segment_length("sqrt", k) for k in (1, 4, 7, 10, 100)] == [1, 2, 3, 4, 10]
    tx = _tx("adam")
    want, _ = _meta_grads(tx)
    got, _ = _meta_grads(tx, checkpoint_every="sqrt")
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("backend", [pytest.param("inductor", marks=pytest.mark.compile), "native"])
def test_checkpointed_equals_full_on_compiled_backends(backend):
    if backend == "native":
        from optcompile.lowering.backends import native_ops

        if not native_ops.is_available(torch.device("cpu")):
            pytest.skip("the native Adam extension is not available here")
    else:
        kernel = optcompile.transform.scale(1.0).kernel
        reason = optcompile.lowering.backends.get_backend("inductor").supports(
            kernel, torch.device("cpu")
        )
        if reason is not None:
            pytest.skip(f"Inductor is not available here: {reason}")
    tx = _tx("adam", backend=backend)
    want, _ = _meta_grads(tx)
    got, _ = _meta_grads(tx, checkpoint_every=2)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_learnable_lr_through_checkpoints_needs_meta():
    params, batches = _problem()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    tx = _tx("adam", lr=lr)

    def grads(**options):
        final, _ = optcompile.unroll(_step_fn(tx), params, tx.init(params), batches, **options)
        return torch.autograd.grad(_loss(final, batches[0]), [lr, *params])

    want = grads()
    for g, w in zip(grads(checkpoint_every=3, meta=[lr]), want, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    with pytest.raises(RuntimeError, match=r"meta=\[\.\.\.\]"):
        grads(checkpoint_every=3)  # the lr's gradient would be lost: refused, not dropped


def test_second_order_through_checkpoints():
    """``create_graph=True`` on the outer gradient: a Hessian-vector product is exact too."""
    tx = _tx("adam")

    def hvp(**options):
        params, batches = _problem()
        final, _ = optcompile.unroll(_step_fn(tx), params, tx.init(params), batches, **options)
        g = torch.autograd.grad(_loss(final, batches[0]), params, create_graph=True)
        return torch.autograd.grad(sum((t**2).sum() for t in g), params)

    for g, w in zip(hvp(checkpoint_every=3), hvp(), strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_random_state_replayed():
    """Dropout in the inner loss: each replay draws the masks its forward drew."""
    tx = _tx("adam")

    def step(params, state, batch):
        def loss(p):
            hidden = torch.nn.functional.dropout(torch.tanh(batch[0] @ p[0]), 0.5)
            return ((hidden @ p[1] - batch[1]) ** 2).mean()

        updates, state = tx.update(torch.func.grad(loss)(params), state, params=params,
                                   inplace=False)  # fmt: skip
        return optcompile.apply_updates(params, updates, inplace=False), state

    def grads(**options):
        params, batches = _problem()
        torch.manual_seed(3)
        final, _ = optcompile.unroll(step, params, tx.init(params), batches, **options)
        after = torch.rand(())  # the random state advanced as in the full unroll
        return (*torch.autograd.grad(_loss(final, batches[0]), params), after)

    for g, w in zip(grads(checkpoint_every=3), grads(), strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_replay_keeps_the_decorator_settings():
    """A first-order ``@optcompile`` loop replays first-order, though backward runs outside."""
    _, batches = _problem()

    def run(**options):
        net = _net()
        initial = list(net.parameters())
        optim = optcompile.MetaSGD(net, lr=0.05, momentum=0.9, backend="eager")
        loss_fn = lambda b: ((net(b[0]) - b[1]) ** 2).mean()  # noqa: E731

        @optcompile.optcompile(backend="eager", first_order=True)
        def adapt():
            optcompile.meta_unroll(optim, loss_fn, batches, **options)

        adapt()
        return torch.autograd.grad(loss_fn(batches[0]), initial)

    for g, w in zip(run(checkpoint_every=3), run(), strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_unroll_options_set_the_defaults():
    """What ``@optcompile(checkpoint_every=..., truncate=...)`` enters around its function."""
    params, batches = _problem()
    tx = _tx("sgd")
    with unroll_options(checkpoint_every=3):
        final, _ = optcompile.unroll(_step_fn(tx), params, tx.init(params), batches)
        assert type(final[0].grad_fn).__name__ == "SegmentBackward"
        final, _ = optcompile.unroll(
            _step_fn(tx), params, tx.init(params), batches, checkpoint_every=7
        )  # the call's own value wins: one segment of 7
        assert final[0].grad_fn.next_functions[0][0].variable is params[0]
        with unroll_options(truncate=8), pytest.raises(ValueError, match="truncate=8"):
            optcompile.meta_unroll(optcompile.MetaSGD(_net(), lr=0.1), lambda b: b, batches)
    with pytest.raises(ValueError, match="checkpoint_every=0"), unroll_options(0):
        pass
    final, _ = optcompile.unroll(_step_fn(tx), params, tx.init(params), batches)
    assert type(final[0].grad_fn).__name__ != "SegmentBackward"


def _truncated_reference(tx, params, batches, lr, keep):
    """Hand-written truncated backpropagation: K - keep steps without a graph, then keep."""
    step, state = _step_fn(tx), tx.init(params)
    with torch.no_grad():
        for batch in batches[: len(batches) - keep]:
            params, state = step(params, state, batch)
    params = tuple(p.detach().requires_grad_() for p in params)
    state = optree.tree_map(lambda t: t.detach().requires_grad_(t.requires_grad), state)
    for batch in batches[len(batches) - keep :]:
        params, state = step(params, state, batch)
    return torch.autograd.grad(_loss(params, batches[0]), lr)


@pytest.mark.parametrize("checkpoint_every", [None, 2])
def test_truncated_equals_hand_written_reference(checkpoint_every):
    params, batches = _problem()
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    tx = _tx("adam", lr=lr)
    want = _truncated_reference(tx, params, batches, lr, keep=3)
    full = torch.autograd.grad(
        _loss(optcompile.unroll(_step_fn(tx), params, tx.init(params), batches)[0], batches[0]),
        lr,
    )
    final, _ = optcompile.unroll(
        _step_fn(tx), params, tx.init(params), batches, truncate=3,
        checkpoint_every=checkpoint_every, meta=[lr],
    )  # fmt: skip
    assert all(not p.requires_grad or p.grad_fn is not None for p in final)
    got = torch.autograd.grad(_loss(final, batches[0]), lr)
    torch.testing.assert_close(got, want, **TOL)
    assert not torch.allclose(got[0], full[0])  # truncation does change the gradient


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
    ).double()


@pytest.mark.parametrize("cls", ["MetaAdam", "MetaSGD"])
def test_meta_unroll_checkpointed_equals_plain_steps(cls):
    _, batches = _problem()

    def run(**options):
        net = _net()
        initial = list(net.parameters())
        kwargs = {"momentum": 0.9} if cls == "MetaSGD" else {}
        optim = getattr(optcompile, cls)(
            net, lr=0.05, moment_requires_grad=True, backend="eager", **kwargs
        )
        moments = [t for t in optree.tree_leaves(optim.state_groups) if t.requires_grad]
        loss_fn = lambda b: ((net(b[0]) - b[1]) ** 2).mean()  # noqa: E731
        if options:
            optcompile.meta_unroll(optim, loss_fn, batches, **options)
        else:
            for batch in batches:
                optim.step(loss_fn(batch))
        final = [p.detach().clone() for p in net.parameters()]
        return torch.autograd.grad(loss_fn(batches[0]), initial + moments), final, net

    want, want_final, _ = run()
    got, got_final, net = run(checkpoint_every=3)
    for g, w in zip([*got, *got_final], [*want, *want_final], strict=True):
        torch.testing.assert_close(g, w, **TOL)
    # After the backward's replays, the module still holds the unroll's final parameters.
    for p, w in zip(net.parameters(), want_final, strict=True):
        torch.testing.assert_close(p.detach(), w, **TOL)


@pytest.mark.parametrize("checkpoint_every", [None, 1])
def test_meta_unroll_truncated_equals_reference(checkpoint_every):
    """Truncated ``meta_unroll`` == steps under no_grad then two recorded steps, for the lr."""
    _, batches = _problem()

    def run(truncated):
        net = _net()
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        optim = optcompile.MetaAdam(net, lr=lr, backend="eager")
        loss_fn = lambda b: ((net(b[0]) - b[1]) ** 2).mean()  # noqa: E731
        if truncated:
            optcompile.meta_unroll(
                optim, loss_fn, batches, truncate=2, checkpoint_every=checkpoint_every,
                meta=[lr],
            )  # fmt: skip
        else:
            for batch in batches[:-2]:
                loss = loss_fn(batch)
                with torch.no_grad():
                    optim.step(loss)
            for batch in batches[-2:]:
                optim.step(loss_fn(batch))
        return torch.autograd.grad(loss_fn(batches[0]), lr)

    torch.testing.assert_close(run(True), run(False), **TOL)


def test_meta_unroll_graph_free():
    _, batches = _problem()
    net = _net()
    optim = optcompile.MetaAdam(net, lr=0.05, backend="eager")
    with torch.no_grad():
        optcompile.meta_unroll(optim, lambda b: ((net(b[0]) - b[1]) ** 2).mean(), batches)
    assert all(p.is_leaf and p.requires_grad for p in net.parameters())
    assert all(t.grad_fn is None for t in optree.tree_leaves(optim.state_groups))


def test_graph_free_evaluation_records_nothing():
    params, batches = _problem()
    tx = _tx("adam")
    with torch.no_grad():
        final, state = optcompile.unroll(_step_fn(tx), params, tx.init(params), batches)
    leaves = [*final, *optree.tree_leaves(state)]
    assert all(t.grad_fn is None for t in leaves)


BAD = [
    ({"checkpoint_every": 0}, ValueError, r"checkpoint_every=0 must be at least 1"),
    ({"checkpoint_every": -2}, ValueError, r"checkpoint_every=-2"),
    ({"checkpoint_every": "log"}, ValueError, r"checkpoint_every='log'.*\"sqrt\""),
    ({"checkpoint_every": 2.5}, TypeError, r"checkpoint_every must be .* got float"),
    ({"checkpoint_every": True}, TypeError, r"checkpoint_every must be .* got bool"),
    ({"truncate": 8}, ValueError, r"truncate=8 exceeds the number of inner steps K=7"),
    ({"truncate": 0}, ValueError, r"truncate=0 must be at least 1"),
    ({"truncate": 2.0}, TypeError, r"truncate must be None or a positive int, got float"),
    ({"meta": [0.1]}, TypeError, r"meta\[0\] must be a tensor"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD)
def test_bad_options(options, error, match):
    params, batches = _problem()
    tx = _tx("sgd")
    with pytest.raises(error, match=match):
        optcompile.unroll(_step_fn(tx), params, tx.init(params), batches, **options)
    optim = optcompile.MetaSGD(_net(), lr=0.1)
    with pytest.raises(error, match=match):
        optcompile.meta_unroll(optim, lambda b: b, batches, **options)
    if "meta" not in options and options != {"truncate": 8}:  # checkable before K is known
        with pytest.raises(error, match=match):
            check_options(options.get("checkpoint_every"), options.get("truncate"))


def test_bad_callables_and_batches():
    params, batches = _problem()
    tx = _tx("sgd")
    with pytest.raises(TypeError, match="step_fn must be callable"):
        optcompile.unroll(None, params, tx.init(params), batches)
    with pytest.raises(TypeError, match="batches must be"):
        optcompile.unroll(_step_fn(tx), params, tx.init(params), torch.zeros(3))
    with pytest.raises(TypeError, match="optimizer must be a MetaOptimizer"):
        optcompile.meta_unroll(tx, _loss, batches)


# ---- memory, measured in a fresh process -------------------------------------------------------

_SIZE = 192  # float64 192 x 192: 288 KiB per tensor, each its own mapping (threshold 64 KiB)


def _peak_growth_mib(k_steps: int, mode: str) -> float:
    """Peak resident growth of one unroll + outer backward (run in the worker process)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(_SIZE, _SIZE, generator=gen, dtype=torch.float64) / _SIZE**0.5
    w.requires_grad_()
    x = torch.randn(8, _SIZE, generator=gen, dtype=torch.float64)
    tx = optcompile.adam(1e-3, backend="eager")

    def step(params, state, batch):
        grads = torch.func.grad(lambda p: (torch.tanh(batch @ p[0]) ** 2).mean())(params)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    options = {"sqrt": {"checkpoint_every": "sqrt"}, "truncate": {"truncate": 4}}.get(mode, {})

    def once() -> None:
        if mode == "no_grad":
            with torch.no_grad():
                optcompile.unroll(step, (w,), tx.init((w,)), [x] * k_steps)
            return
        final, _ = optcompile.unroll(step, (w,), tx.init((w,)), [x] * k_steps, **options)
        (final[0] ** 2).sum().backward()

    once()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mib("VmRSS")
    once()
    return _status_mib("VmHWM") - baseline


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_grows_sublinearly_with_checkpointing():
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    growth = json.loads(out.stdout.strip().splitlines()[-1])
    full, sqrt = growth["full"], growth["sqrt"]
    full_slope = full["64"] - full["16"]  # the full unroll: linear in K
    assert full["64"] > 2.5 * full["16"], growth
    # "sqrt" checkpointing: ~2 sqrt(K) step-sized blocks, so the growth from K = 16 to 64 is
    # ~1/6 of the full unroll's; a 0.5 bound keeps the test far from noise.
    assert sqrt["64"] - sqrt["16"] < 0.5 * full_slope, growth
    assert sqrt["64"] < 0.5 * full["64"], growth
    # Truncated to 4 steps, and graph-free evaluation: flat in K.
    for mode in ("truncate", "no_grad"):
        assert growth[mode]["64"] < growth[mode]["16"] + 0.25 * full_slope, growth


if __name__ == "__main__":  # the memory worker
    torch.set_num_threads(1)
    result = {
        mode: {str(k): _peak_growth_mib(k, mode) for k in (16, 64)}
        for mode in ("full", "sqrt", "truncate", "no_grad")
    }
    print(json.dumps(result))
