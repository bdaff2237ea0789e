"""The Inductor backend: equals eager, never recompiles for new values, falls back loudly.

Compiling is slow (about 12 s for the first graph in an empty cache, about 1 s per further
graph), so the tests that compile (marker ``compile``) share one rule and one set of shapes and
build fewer than ten graphs in all; the fallback and bookkeeping tests compile nothing. Where
Inductor cannot run (no C++ compiler, ``OPTCOMPILE_DISABLE_INDUCTOR=1``) the compiling tests
skip and the fallback tests still run.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import optcompile
from optcompile import sym
from optcompile.lowering import backends, cache
from optcompile.lowering.backends.inductor import DISABLE_ENV_VAR, simulate_failure
from optcompile.lowering.stats import reset_stats, stats


@optcompile.rule(state=("mu", "nu"), domains={"b1": "[0, 1)", "b2": "[0, 1)", "eps": ">= 0"})
def adamw_like(g, mu, nu, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, params, count):
    """Adam with decoupled weight decay; reads every kind of input (state, params, count)."""
    mu = b1 * mu + (1 - b1) * g
    nu = b2 * nu + (1 - b2) * g**2
    direction = (mu / (1 - b1**count)) / (sym.sqrt(nu / (1 - b2**count)) + eps)
    return -lr * (direction + wd * params), (mu, nu)


@optcompile.rule(state=("trace",))
def momentum_like(g, trace, *, lr=0.1, decay=0.9):
    """Heavy-ball momentum; its own kernel, so a simulated compile failure stays local."""
    trace = decay * trace + g
    return -lr * trace, (trace,)


SHAPES = [(5, 3), (7,)]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-7}, torch.float64: {"rtol": 1e-10, "atol": 0}}


@pytest.fixture(autouse=True)
def _one_thread_fresh_stats(monkeypatch):
    # The thread count is part of the compiled code and of the graph key; 1 thread also keeps
    # shared CI hosts from oversubscribing. Each test starts with zero counters and no record
    # of warnings already given, so "warns once" holds whatever ran before.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(backends, "_warned", set())
    # The test tensors are tiny: let "auto" consider compiling them anyway.
    monkeypatch.setattr(backends, "_auto_compile_threshold", 0)
    reset_stats()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def inductor():
    """Skip (not fail) where Inductor cannot run: no C++ compiler, or turned off by the user."""
    reason = backends.get_backend("inductor").supports(adamw_like.kernel, torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"Inductor unavailable: {reason}")


def _inputs(dtype, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, positive=False):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        return (x.abs() + 0.1 if positive else x).to(dtype)

    params = [rand(s) for s in shapes]
    grads = [rand(s) for s in shapes]
    mu = [rand(s) for s in shapes]
    nu = [rand(s, positive=True) for s in shapes]
    return params, grads, mu, nu


def _step(backend, *, lr, grads, mu, nu, params):
    """One differentiable step (count 1) from the given moments."""
    tx = adamw_like(backend=backend, lr=lr)
    state = tx.init(params)._replace(mu=mu, nu=nu)
    return tx.update(grads, state, params=params, inplace=False)


@pytest.mark.compile
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_vjp_match_eager(dtype, inductor):
    params, grads, mu, nu = _inputs(dtype)
    weights = _inputs(dtype, seed=1)[1:]  # one cotangent per output: update, mu', nu'
    results = {}
    for backend in ("eager", "inductor"):
        leaves = [t.clone().requires_grad_() for t in (*params, *grads, *mu, *nu)]
        p, g, m, v = (leaves[i : i + len(SHAPES)] for i in range(0, len(leaves), len(SHAPES)))
        lr = torch.tensor(3e-2, dtype=torch.float64, requires_grad=True)
        update, state = _step(backend, lr=lr, grads=g, mu=m, nu=v, params=p)
        outputs = [*update, *state.mu, *state.nu]
        loss = sum((w * o).sum() for w, o in zip(sum(weights, []), outputs, strict=True))
        results[backend] = (outputs, torch.autograd.grad(loss, [*leaves, lr]))
    (out_e, grad_e), (out_i, grad_i) = results["eager"], results["inductor"]
    for a, b in zip([*out_i, *grad_i], [*out_e, *grad_e], strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert grad_i[-1].dtype == torch.float64 and grad_i[-1].abs() > 0  # the lr hypergradient
    counts = stats()
    assert counts["inductor"]["steps"] == 1 and counts["inductor"]["vjp_calls"] == 1
    assert counts["eager"]["steps"] == 1 and counts["inductor"]["fallbacks"] == []


@pytest.mark.compile
def test_same_shapes_other_strides_get_their_own_graph(inductor):
    """The kernel graphs carry no input size/stride assertions (cache.inductor_options), so a
    graph must never be reused for inputs laid out differently: the lookup key has the strides."""
    params, grads, mu, nu = _inputs(torch.float32, [(4, 6)])
    transposed = [t.t().contiguous().t() for t in (*params, *grads, *mu, *nu)]  # same values
    assert transposed[0].stride() != params[0].stride()
    results = []
    for inputs in ((params, grads, mu, nu), [transposed[i : i + 1] for i in range(4)]):
        p, g, m, v = inputs
        before = stats()["inductor"]["graphs"]
        update, state = _step("inductor", lr=0.01, grads=g, mu=m, nu=v, params=p)
        assert stats()["inductor"]["graphs"] - before == 1  # (4, 6) is this test's own shape
        results.append([*update, *state.mu, *state.nu])
    eager_update, eager_state = _step("eager", lr=0.01, grads=grads, mu=mu, nu=nu, params=params)
    for got in results:
        for a, b in zip(got, [*eager_update, *eager_state.mu, *eager_state.nu], strict=True):
            torch.testing.assert_close(a, b, **TOL[torch.float32])
    assert cache.inductor_options()["size_asserts"] is False


@pytest.mark.compile
def test_no_recompile_for_new_values_one_graph_per_new_shape(inductor):
    dtype = torch.float32

    def run(backend, shapes, steps):
        params, grads, mu, nu = _inputs(dtype, shapes)
        state = adamw_like(lr=0.0).init(params)._replace(mu=mu, nu=nu)
        for i in range(steps):
            # A new lr value, a new step count and new data at every step.
            tx = adamw_like(backend=backend, lr=0.01 * (i + 1))
            grads = [g * (1.5 + i) for g in grads]
            updates, state = tx.update(grads, state, params=params)
            params = [p + u for p, u in zip(params, updates, strict=True)]
        # A schedule's value also reaches the kernel as a 0-d tensor input.
        tx = adamw_like(backend=backend, lr=lambda count: 0.1 / (1.0 + count))
        updates, state = tx.update(grads, state, params=params)
        return [p + u for p, u in zip(params, updates, strict=True)]

    run("inductor", SHAPES, 1)  # compiles (or reuses) the forward graph for SHAPES
    before = stats()["inductor"]
    got = run("inductor", SHAPES, 5)
    after = stats()["inductor"]
    assert after["steps"] - before["steps"] == 6
    assert (after["graphs"], after["recompiles"]) == (before["graphs"], before["recompiles"])
    expected = run("eager", SHAPES, 5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])

    new_shapes = [(4, 2), (9,)]
    run("inductor", new_shapes, 3)
    final = stats()["inductor"]
    assert final["graphs"] - after["graphs"] == 1
    assert final["recompiles"] - after["recompiles"] == 1
    assert final["fallbacks"] == []


@pytest.mark.compile
def test_create_graph_backward_runs_the_eager_vjp(inductor):
    dtype = torch.float64
    params, grads, mu, nu = _inputs(dtype)
    second = {}
    for backend in ("eager", "inductor"):
        g = [t.clone().requires_grad_() for t in grads]
        lr = torch.tensor(3e-2, dtype=dtype, requires_grad=True)
        update, state = _step(backend, lr=lr, grads=g, mu=mu, nu=nu, params=params)
        loss = sum((u * u).sum() for u in update) + sum(m.sum() for m in state.mu)
        first = torch.autograd.grad(loss, g, create_graph=True)
        second[backend] = torch.autograd.grad(sum((d * d).sum() for d in first), [lr, *g])
    for a, b in zip(second["inductor"], second["eager"], strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert stats()["inductor"]["steps"] == 1


@pytest.mark.compile
def test_failed_compile_runs_eagerly_and_warns_once(inductor):
    params = [torch.randn(s) for s in SHAPES]
    grads = [torch.randn(s) for s in SHAPES]

    def two_steps(backend):
        tx = momentum_like(backend=backend, lr=0.5)
        state = tx.init(params)
        outputs = []
        for _ in range(2):
            updates, state = tx.update(grads, state)
            outputs += [*updates, *state.trace]
        return outputs

    failing = simulate_failure("compile", "no C++ compiler (simulated)")
    warns = pytest.warns(RuntimeWarning, match="could not compile momentum_like")
    with failing, warns as record:
        got = two_steps("auto")
    assert len(record) == 1
    for a, b in zip(got, two_steps("eager"), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    counts = stats()
    (fallback,) = counts["inductor"]["fallbacks"]
    assert fallback["kernel"] == "momentum_like"
    assert "no C++ compiler (simulated)" in fallback["reason"]
    assert counts["eager"]["steps"] == 4 and counts["inductor"]["steps"] == 0
    backends.get_backend("inductor").clear(momentum_like.kernel)  # compile it again next time


@pytest.mark.parametrize("how", ["env", "probe"])
def test_unavailable_inductor_falls_back_to_eager(how, monkeypatch):
    monkeypatch.delenv(DISABLE_ENV_VAR, raising=False)
    if how == "env":
        monkeypatch.setenv(DISABLE_ENV_VAR, "1")
        context, reason = simulate_failure("compile", "must not compile"), "disabled by"
    else:
        context, reason = simulate_failure("probe", "no C++ compiler (simulated)"), "simulated"
    params, grads, mu, nu = _inputs(torch.float64)
    with context, warnings.catch_warnings():
        # Whether "auto" also says that native does not cover this rule is the registry's
        # business; this test counts what is said about Inductor.
        warnings.filterwarnings("ignore", message="optcompile: backend 'native'")
        with pytest.warns(RuntimeWarning, match=reason) as record:
            first = _step("auto", lr=0.1, grads=grads, mu=mu, nu=nu, params=params)
            again = _step("auto", lr=0.1, grads=grads, mu=mu, nu=nu, params=params)
        assert sum("'inductor'" in str(w.message) for w in record) == 1
        reasons = {f["reason"] for f in stats()["inductor"]["fallbacks"]}
        assert len(reasons) == 1 and reason in reasons.pop()
    expected = _step("eager", lr=0.1, grads=grads, mu=mu, nu=nu, params=params)
    for got in (first, again):
        for a, b in zip([*got[0], *got[1].mu], [*expected[0], *expected[1].mu], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    counts = stats()
    assert counts["eager"]["steps"] == 3 and counts["inductor"]["graphs"] == 0


def test_stats_count_eager_calls_and_reset():
    params, grads, mu, nu = _inputs(torch.float64)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    update, _ = _step("eager", lr=lr, grads=grads, mu=mu, nu=nu, params=params)
    update[0].sum().backward()
    counts = stats()["eager"]
    assert (counts["steps"], counts["vjp_calls"], counts["graphs"]) == (1, 1, 0)
    reset_stats()
    assert stats()["eager"]["steps"] == 0


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    xdg = (tmp_path / "xdg" / "optcompile" / "inductor").resolve()
    assert cache.cache_dir() == xdg
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # torch's, not the user's
    assert cache.cache_dir() == xdg
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    assert cache.cache_dir() == (tmp_path / "theirs").resolve()
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "ours"))
    assert cache.cache_dir() == (tmp_path / "ours").resolve()
    assert cache.inductor_options()["fx_graph_cache"] is True


def test_disabled_backend_is_not_probed(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV_VAR, "1")
    backend = backends.get_backend("inductor")
    with simulate_failure("probe", "must not be probed"), warnings.catch_warnings():
        warnings.simplefilter("error")
        reason = backend.supports(adamw_like.kernel, torch.device("cpu"))
    assert reason == f"disabled by {DISABLE_ENV_VAR}"


def test_cpu_graphs_default_to_the_cpp_wrapper_and_others_do_not():
    """``compile_graph``'s defaults: the C++ wrapper where every tensor is on the CPU (non-tensor
    inputs such as sizes do not count), Inductor's own defaults as soon as one is not."""
    from optcompile.lowering.backends.inductor import default_options

    cpu, meta = torch.zeros(3), torch.zeros(3, device="meta")
    assert default_options([cpu, 4, cpu]) == {"cpp_wrapper": True}
    assert default_options([cpu, meta]) == {}
    assert default_options([meta]) == {}
