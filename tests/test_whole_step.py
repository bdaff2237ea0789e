"""``@optcompile`` on a functional inner step: the whole step compiled by torch.compile.

Model forward, loss, ``torch.func.grad``, the fused update and their backward run as one
Inductor graph, the same for the first step of an unroll and the later ones. The reference is
the same function run eagerly (optcompile's eager backend): float64 meta-gradients through K
compiled steps must equal it to 1e-10, with no NaN for a parameter whose gradient is exactly
zero. Every test compiles (marker ``compile``): about 5-15 s per optimizer in an empty cache
on this host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, grad

import optcompile
from optcompile.lowering.backends.inductor import (
    DISABLE_ENV_VAR,
    availability,
    simulate_failure,
)

pytestmark = pytest.mark.compile
K = 3
TOL = {"rtol": 1e-10, "atol": 1e-12}
ALIASES = {
    "sgd": lambda lr: optcompile.sgd(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optcompile.adam(lr),
    "adamw": lambda lr: optcompile.adamw(lr, weight_decay=0.1),
    "adamax": lambda lr: optcompile.adamax(lr),
    "adagrad": lambda lr: optcompile.adagrad(lr, lr_decay=0.01),
    "adadelta": lambda lr: optcompile.adadelta(lr * 10),
    "radam": lambda lr: optcompile.radam(lr),
    "rmsprop": lambda lr: optcompile.rmsprop(lr, momentum=0.5, centered=True),
}


@pytest.fixture(autouse=True)
def _needs_inductor():
    if (reason := availability(torch.device("cpu"))) is not None:
        pytest.skip(f"Inductor is not available here: {reason}")


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net = net.double()
    params = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    # Multiplied by zero in the loss: its gradient is exactly 0 at every step (Adam's sqrt(nu)
    # at 0, where a textbook derivative gives inf * 0 = NaN).
    params["dead"] = torch.randn(2, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(seed + 1)
    data = [torch.randn(8, d, generator=generator, dtype=torch.float64) for d in (3, 1, 3, 1)]
    return net, params, data


def _loss(net, params, x, y):
    weights = {k: v for k, v in params.items() if k != "dead"}
    return ((functional_call(net, weights, (x,)) - y) ** 2).mean() + 0.0 * params["dead"].sum()


def _make_step(net, tx):
    def inner_step(params, state, x, y):
        grads = grad(lambda p: _loss(net, p, x, y))(params)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    return inner_step


def _meta_gradient(step, tx, net, params, data):
    x, y, xq, yq = data
    fast, state = params, tx.init(params)
    for _ in range(K):
        fast, state = step(fast, state, x, y)
    return torch.autograd.grad(_loss(net, fast, xq, yq), list(params.values()))


@pytest.mark.parametrize("name", ALIASES)
def test_compiled_step_meta_gradients_equal_eager(name):
    net, params, data = _problem()
    tx = ALIASES[name](0.1)
    plain = _make_step(net, tx)
    compiled = optcompile.optcompile(plain)
    got = _meta_gradient(compiled, tx, net, params, data)
    want = _meta_gradient(plain, tx, net, params, data)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **TOL)
    assert got[-1].abs().sum() == 0  # the dead parameter: exactly zero, not NaN


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_no_recompile_for_new_steps_data_or_learning_rate_values():
    net, params, (x, y, xq, yq) = _problem()
    lr = torch.tensor(0.1, dtype=torch.float64)
    tx = optcompile.adam(lr)
    step = optcompile.optcompile(_make_step(net, tx))
    before = _graphs()
    fast, state = step(params, tx.init(params), x, y)
    assert _graphs() == before + 1
    generator = torch.Generator().manual_seed(5)
    for k in range(6):
        lr.fill_(0.05 * (k + 1))  # a new value of a tensor hyper-parameter
        batch = [torch.randn_like(t, generator=generator) for t in (x, y)]  # new data
        fast, state = step(fast, state, *batch)  # and new step counts
    assert _graphs() == before + 1
    assert int(state[0].count[0]) == 7


def test_one_graph_over_1000_outer_iterations_of_maml():
    """Issue 10's target: 0 recompiles over 1000 outer iterations (K=5) of a MAML loop.

    Every outer iteration starts from ``nn.Parameter`` leaves and moments fresh from
    ``tx.init`` (which do not require grad, unlike the moments of later steps): the first
    step shares the graph of the others. The step count runs 0..4 in every unroll, the 0-d
    learning rate and the data change every outer iteration, and the outer Adam step moves
    the initial parameters in place between iterations.
    """
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    params = dict(net.named_parameters())
    lr = torch.tensor(0.1)
    tx = optcompile.adam(lr)
    outer = torch.optim.SGD(net.parameters(), lr=1e-3)

    def loss(p, x, y):
        return ((functional_call(net, p, (x,)) - y) ** 2).mean()

    @optcompile.optcompile
    def inner_step(params, state, x, y):
        grads = grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    generator = torch.Generator().manual_seed(1)
    before = _graphs()
    for it in range(1000):
        lr.fill_(0.05 + 1e-4 * it)
        x, y, xq, yq = (torch.randn(4, d, generator=generator) for d in (3, 1, 3, 1))
        fast, state = params, tx.init(params)
        for _ in range(5):
            fast, state = inner_step(fast, state, x, y)
        outer.zero_grad()
        loss(fast, xq, yq).backward()
        outer.step()
        if it == 0:
            assert _graphs() == before + 1  # one graph for every step, the first included
    assert _graphs() == before + 1
    assert all(torch.isfinite(p).all() for p in params.values())


def test_memory_budget_keeps_the_meta_gradients():
    """Recomputing in the backward what the budget does not let the forward save: same maths."""
    net, params, data = _problem()
    tx = optcompile.adam(0.1)
    plain = _make_step(net, tx)
    compiled = optcompile.optcompile(plain, memory_budget=0.3)
    got = _meta_gradient(compiled, tx, net, params, data)
    want = _meta_gradient(plain, tx, net, params, data)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0.0, ValueError, r"memory_budget=0.0 must be in \(0, 1\]"),
        (1.5, ValueError, r"memory_budget=1.5 must be in \(0, 1\]"),
        ("half", TypeError, r"memory_budget='half' must be a number"),
        (True, TypeError, r"memory_budget=True must be a number"),
    ],
)
def test_bad_memory_budget_is_a_clear_error(value, error, match):
    with pytest.raises(error, match=match):
        optcompile.optcompile(memory_budget=value)


def test_first_order_equals_first_order_maml():
    net, params, (x, y, xq, yq) = _problem()
    tx = optcompile.sgd(0.1)
    step = optcompile.optcompile(_make_step(net, tx), first_order=True)
    fast, state = params, tx.init(params)
    for _ in range(K):
        fast, state = step(fast, state, x, y)
    got = torch.autograd.grad(_loss(net, fast, xq, yq), list(params.values()))
    # First-order MAML: the gradient of the query loss at the adapted parameters.
    reference = {k: v.detach().clone() for k, v in params.items()}
    for _ in range(K):
        grads = grad(lambda p: _loss(net, p, x, y))(reference)
        reference = {k: v - 0.1 * grads[k] for k, v in reference.items()}
    adapted = {k: v.requires_grad_() for k, v in reference.items()}
    want = torch.autograd.grad(_loss(net, adapted, xq, yq), list(adapted.values()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("how", ["compile fails", "disabled"])
def test_without_inductor_the_same_results_eagerly_with_one_warning(how, monkeypatch):
    """A compile that fails (no compiler, no Triton) is the test: no trial compile runs first."""
    net, params, data = _problem()
    tx = optcompile.adam(0.1)
    plain = _make_step(net, tx)
    want = _meta_gradient(plain, tx, net, params, data)
    if how == "disabled":
        monkeypatch.setenv(DISABLE_ENV_VAR, "1")
    failing = simulate_failure("compile", "no compiler here")
    with failing, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step = optcompile.optcompile(plain)
        got = _meta_gradient(step, tx, net, params, data)
    reason = "no compiler here" if how == "compile fails" else f"disabled by {DISABLE_ENV_VAR}"
    ours = [w for w in caught if "@optcompile cannot compile" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "inner_step" in str(ours[0].message) and reason in str(ours[0].message)
    assert ours[0].filename == __file__  # points at the call of the decorated step
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize(("cpp_wrapper", "expected"), [(None, True), (False, False)])
def test_inductor_options_apply_to_the_forward_and_backward_graphs(cpp_wrapper, expected):
    """On CPU the graphs run from Inductor's C++ wrapper unless ``options`` turn it off; either
    way the meta-gradients are eager's, and the setting holds for both compiles: the
    backward's happens later, at the first outer backward."""
    from torch._inductor import config

    seen = []
    options = {"post_grad_custom_post_pass": lambda graph: seen.append(config.cpp_wrapper)}
    if cpp_wrapper is not None:
        options["cpp_wrapper"] = cpp_wrapper
    net, params, data = _problem()
    tx = optcompile.adam(0.1)
    plain = _make_step(net, tx)
    got = _meta_gradient(optcompile.optcompile(plain, options=options), tx, net, params, data)
    want = _meta_gradient(plain, tx, net, params, data)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)
    assert seen == [expected, expected]  # the forward graph, then the backward graph
    assert config.cpp_wrapper is False  # only inside optcompile's compiles


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"cpp_wraper": True}, ValueError, "'cpp_wraper' is not an Inductor setting; did you mean"),
        ({"cpp_wrapper": "yes"}, TypeError, "'cpp_wrapper' must be a bool, got str"),
        (["cpp_wrapper"], TypeError, "must be a mapping from Inductor setting names"),
    ],
)  # fmt: skip
def test_bad_inductor_options_are_a_clear_error_at_decoration(options, error, match):
    with pytest.raises(error, match=match):
        optcompile.optcompile(lambda p: p, options=options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"backend": "eager"}, "backend='eager' compiles nothing"),
     ({"truncate": 2}, "checkpoint_every/truncate run its loop eagerly")],
)  # fmt: skip
def test_inductor_options_where_nothing_compiles_whole_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optcompile.optcompile(lambda p: p, options={"cpp_wrapper": True}, **kwargs)


_IN_A_NEW_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import optcompile, test_whole_step as t
    from torch._dynamo.utils import counters
    net, params, data = t._problem()
    tx = t.ALIASES[sys.argv[1]](0.1)
    plain = t._make_step(net, tx)
    got = t._meta_gradient(optcompile.optcompile(plain), tx, net, params, data)
    want = t._meta_gradient(plain, tx, net, params, data)
    error = max(float((g - w).abs().max()) for g, w in zip(got, want))
    print(json.dumps({"aot_autograd": dict(counters["aot_autograd"]), "error": error}))
    """
)


def test_a_new_process_loads_the_compiled_step_and_its_backward_from_the_cache(tmp_path):
    """The fused step is an autograd.Function in the graph; AOTAutograd's cache must still
    take the graph (else every process re-derives the joint graph: seconds of warm start),
    and a different rule in the same cache directory must get its own entry, not a hit."""
    env = dict(os.environ, OPTCOMPILE_CACHE_DIR=str(tmp_path), TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD", None)
    runs = []
    for name in ("adam", "adam", "rmsprop"):
        out = subprocess.run(
            [sys.executable, "-c", _IN_A_NEW_PROCESS, name, str(Path(__file__).parent)],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, again, other = (run["aot_autograd"] for run in runs)
    assert first.get("autograd_cache_saved") == 1 and not first.get("autograd_cache_bypass")
    assert again.get("autograd_cache_hit") == 1
    assert other.get("autograd_cache_miss") == 1 and not other.get("autograd_cache_hit")
    for run in runs:
        assert run["error"] <= 1e-10, run


def _meta_gradient_function(net, tx, data, steps):
    """The whole meta-gradient as one function: torch.func.grad of K steps and the query loss."""
    x, y, xq, yq = data

    def meta_gradient(params):
        def outer(params):
            fast, state = params, tx.init(params)  # initialised inside, as a constant
            for _ in range(steps):
                grads = grad(lambda p: _loss(net, p, x, y))(fast)
                updates, state = tx.update(grads, state, params=fast, inplace=False)
                fast = optcompile.apply_updates(fast, updates, inplace=False)
            return _loss(net, fast, xq, yq)

        return grad(outer)(params)

    return meta_gradient


def test_meta_gradient_form_equals_the_outer_backward():
    net, params, data = _problem()
    tx = optcompile.adam(0.1)
    detached = {k: v.detach() for k, v in params.items()}
    tx.init(detached)  # builds the kernels: sympy cannot be traced
    compiled = optcompile.optcompile(_meta_gradient_function(net, tx, data, steps=2))
    got = compiled(detached)
    fast, state = params, tx.init(params)
    for _ in range(2):
        fast, state = _make_step(net, tx)(fast, state, *data[:2])
    want = torch.autograd.grad(_loss(net, fast, *data[2:]), list(params.values()))
    for g, w in zip(got.values(), want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, **TOL)
    assert got["dead"].abs().sum() == 0


def test_transformation_first_used_inside_a_compiled_function_is_a_clear_error():
    net, params, data = _problem()
    tx = optcompile.rmsprop(0.1, momentum=0.3)  # never initialised outside
    compiled = optcompile.optcompile(_meta_gradient_function(net, tx, data, steps=1))
    with pytest.raises(optcompile.LoweringError, match=r"first used inside a compiled .*init\(\)"):
        compiled({k: v.detach() for k, v in params.items()})


def test_step_of_only_wrapped_values_inside_compiled_grad_is_refused_not_wrong():
    tx = optcompile.adam(0.1)
    params = {"w": torch.randn(3, dtype=torch.float64)}
    tx.init(params)

    @optcompile.optcompile
    def hypergradient(params):
        def outer(params):  # the update reads params only: every input is a wrapped value
            updates, _ = tx.update(params, tx.init(params), params=params, inplace=False)
            return sum((u**2).sum() for u in updates.values())

        return grad(outer)(params)

    with pytest.raises(optcompile.LoweringError, match=r"wrapped values .*backend='eager'"):
        hypergradient(params)


def test_python_branch_on_a_tensor_value_is_a_clear_error():
    net, params, (x, y, _, _) = _problem()
    tx = optcompile.sgd(0.1)

    @optcompile.optcompile
    def branching_step(params, state, x, y):
        grads = grad(lambda p: _loss(net, p, x, y))(params)
        if grads["0.weight"].sum() > 0:  # Python control flow on a tensor's value
            grads = {k: -g for k, g in grads.items()}
        updates, state = tx.update(grads, state, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    with pytest.raises(optcompile.LoweringError, match=r"branching_step .*one graph.*torch\.where"):
        branching_step(params, tx.init(params), x, y)


def test_object_oriented_loops_keep_running_fused_steps():
    """A MetaOptimizer among the arguments: steps on the backend, the user's code eager."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    x = torch.randn(4, 3, dtype=torch.float64)

    @optcompile.optcompile(backend="eager")
    def inner_loop(net, optimizer):
        for _ in range(2):
            optimizer.step((net(x) ** 2).mean())

    reference = torch.nn.Linear(3, 1).double()
    reference.load_state_dict(net.state_dict())
    inner_loop(net, optcompile.MetaAdam(net, lr=0.1))
    plain = optcompile.MetaAdam(reference, lr=0.1)
    for _ in range(2):
        plain.step((reference(x) ** 2).mean())
    torch.testing.assert_close(net.weight, reference.weight, **TOL)
