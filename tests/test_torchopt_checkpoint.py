"""TorchOpt checkpoints load and continue with TorchOpt's numbers; anything else is refused by
name; every optcompile state loads with ``torch.load``'s defaults (issue 16, fixes 1 and 5)."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import optcompile

CASES = [
    ("Adam", {}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.1}),
    ("AdamW", {}),
    ("Adamax", {}),
    ("Adagrad", {"lr_decay": 0.1}),
    ("Adadelta", {}),
    ("RAdam", {}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
]
X = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def _step(net, optimizer, meta):
    loss = (net(X) ** 2).mean()
    if meta:
        optimizer.step(loss)
    else:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("meta", [False, True], ids=["torch-style", "meta"])
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}{k}" for n, k in CASES])
def test_torchopt_checkpoint_continues_with_torchopt_numbers(name, kwargs, meta):
    torchopt = pytest.importorskip("torchopt")
    cls = "Meta" + name if meta else name
    net = _net()
    theirs = getattr(torchopt, cls)(net if meta else net.parameters(), **kwargs)
    for _ in range(3):
        _step(net, theirs, meta)
    buffer = io.BytesIO()
    torch.save(theirs.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)  # TorchOpt's classes are not safe globals
    ours_net = _net()
    ours_net.load_state_dict({k: v.detach() for k, v in net.state_dict().items()})
    ours = getattr(optcompile, cls)(ours_net if meta else ours_net.parameters(), **kwargs)
    ours.load_state_dict(saved)
    for _ in range(10):
        _step(net, theirs, meta)
        _step(ours_net, ours, meta)
    # TorchOpt computes Adam's bias correction in float32 (~1e-7 per step, see the guide's
    # "Coming from TorchOpt"); everything else agrees to float64 rounding.
    tol = 1e-6 if "Adam" in name and name != "Adamax" and name != "RAdam" else 1e-9
    for a, b in zip(net.parameters(), ours_net.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


def test_uninitialized_torchopt_state_loads_as_a_fresh_state():
    torchopt = pytest.importorskip("torchopt")
    theirs = torchopt.MetaAdam(_net(), lr=0.1)
    ours = optcompile.MetaAdam(_net(), lr=0.1)
    before = ours.state_dict()
    ours.load_state_dict(theirs.state_dict())  # (UninitializedState(),) before a step
    assert type(ours.state_dict()[0][0]) is type(before[0][0])


def test_state_of_another_optimizer_is_refused_naming_the_classes():
    torchopt = pytest.importorskip("torchopt")
    net = _net()
    theirs = torchopt.MetaSGD(net, lr=0.1, momentum=0.9)
    theirs.step((net(X) ** 2).mean())
    ours = optcompile.MetaAdam(_net(), lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"group 0, member 0: this optimizer's state is a ScaleByAdamState\(mu, nu, count\) "
        r"but the state_dict holds a TraceState\(trace\) \(from torchopt\.transform\.trace\)",
    ):
        ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize(
    ("state_dict", "message"),
    [
        (lambda s: s[0], r"expected a tuple of 1 group state"),
        (lambda s: ((s[0][0],),), r"missing; this optimizer's is a EmptyState"),
        (
            lambda s: ((s[0][0]._replace(mu=s[0][0].mu[:1]), s[0][1]),),
            r"ScaleByAdamState\.mu: 1 leaves in the state_dict, but this optimizer has 2",
        ),
        (
            lambda s: ((s[0][0]._replace(nu=[torch.zeros(5), s[0][0].nu[1]]), s[0][1]),),
            r"ScaleByAdamState\.nu\[0\]: shape \(5,\) in the state_dict, but this optimizer's "
            r"is \(1, 3\)",
        ),
    ],
    ids=["not-a-tuple", "member-missing", "leaf-missing", "shape"],
)
def test_mismatches_are_named(state_dict, message):
    optimizer = optcompile.Adam(nn.Linear(3, 1).parameters(), lr=0.1)
    before = optimizer.state_dict()
    with pytest.raises(ValueError, match=message):
        optimizer.load_state_dict(state_dict(before))
    assert all(a is b for a, b in zip(optimizer.state_dict(), before, strict=True))


def test_own_state_loads_by_reference():
    optimizer = optcompile.MetaAdam(nn.Linear(3, 1), lr=0.1)
    state = optimizer.state_dict()
    optimizer.load_state_dict(state)
    assert optimizer.state_dict()[0] is state[0]


def _every_state(params):
    T = optcompile.transform
    txs = [
        optcompile.adam(optcompile.schedule.linear_schedule(0.1, 0.01, 5)),
        optcompile.sgd(0.1, momentum=0.9),
        optcompile.adagrad(),
        optcompile.adadelta(),
        optcompile.adamax(),
        optcompile.radam(),
        optcompile.rmsprop(centered=True, momentum=0.5),
        optcompile.adamw(mask=[True, False]),
        T.masked(T.scale_by_adam()),
        T.scale_by_rms(),
        T.scale_by_schedule(lambda c: 0.1),
        optcompile.chain(optcompile.clip_grad_norm(1.0), optcompile.nan_to_num()),
    ]
    states = [tx.init(params) for tx in txs]
    states.append(optcompile.UninitializedState())
    states.append(optcompile.extract_state_dict(nn.Linear(2, 1), by="deepcopy"))
    return states


def test_torch_load_default_arguments_load_every_state(tmp_path):
    params = [torch.zeros(2), torch.zeros(3)]
    for k, state in enumerate(_every_state(params)):
        path = tmp_path / f"{k}.pt"
        torch.save(state, path)
        loaded = torch.load(path)  # weights_only=True, torch's default
        assert type(loaded) is type(state)
        assert repr(loaded) == repr(state)


def test_torch_load_default_arguments_in_a_fresh_process(tmp_path):
    path = tmp_path / "adam.pt"
    params = [torch.zeros(2)]
    torch.save(optcompile.adam(optcompile.schedule.linear_schedule(0.1, 0.0, 3)).init(params), path)
    code = textwrap.dedent(
        f"""
        import torch, optcompile
        state = torch.load({str(path)!r})
        print(type(state[0]).__name__, type(state[1]).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ScaleByAdamState", "ScaleByScheduleState"]


def test_func_optimizer_loads_a_torchopt_state():
    torchopt = pytest.importorskip("torchopt")
    net = _net()
    params = tuple(net.parameters())

    def loss_of(ps):
        names = [n for n, _ in net.named_parameters()]
        return (
            torch.func.functional_call(net, dict(zip(names, ps, strict=True)), (X,)) ** 2
        ).mean()

    theirs = torchopt.FuncOptimizer(torchopt.adamax(lr=0.1))
    p_theirs = params
    for _ in range(3):
        p_theirs = theirs.step(loss_of(p_theirs), p_theirs)
    ours = optcompile.FuncOptimizer(optcompile.adamax(lr=0.1))
    p_ours = tuple(p.detach().clone().requires_grad_() for p in p_theirs)
    ours.load_state_dict(theirs.state_dict())  # before any step: checked at the first one
    for _ in range(5):
        p_theirs = theirs.step(loss_of(p_theirs), p_theirs)
        p_ours = ours.step(loss_of(p_ours), p_ours)
    for a, b in zip(p_theirs, p_ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_torchopt_non_flat_state_loads():
    torchopt = pytest.importorskip("torchopt")
    from torchopt.alias.utils import _set_use_chain_flat

    params = (torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    grads = (
        torch.full((2,), 0.5, dtype=torch.float64),
        torch.full((3,), -0.5, dtype=torch.float64),
    )
    _set_use_chain_flat(False)
    try:
        tx = torchopt.adam(0.1)
        state = tx.init(params)
        _, state = tx.update(grads, state, params=params, inplace=False)
    finally:
        _set_use_chain_flat(True)
    assert isinstance(state[0].mu, tuple)  # TorchOpt's non-flat layout
    ours = optcompile.Adam([p.clone() for p in params], lr=0.1)
    ours.load_state_dict((state,))
    loaded = ours.state_dict()[0][0]
    assert [c.item() for c in loaded.count] == [1, 1]
    for a, b in zip(loaded.mu, state[0].mu, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------ found in review


def test_optimizer_states_survive_torch_save_and_a_fresh_process(tmp_path):
    schedule = optcompile.schedule.linear_schedule(0.1, 0.01, 10)
    for tx in (optcompile.adam(0.1), optcompile.sgd(0.1, momentum=0.9), optcompile.adam(schedule)):
        state = tx.init([torch.ones(2)])
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        assert repr(torch.load(buffer, weights_only=False)) == repr(state)
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps(optcompile.rmsprop(0.1, momentum=0.5).init([torch.ones(2)])))
    code = f"import pickle; print(pickle.loads(open({str(path)!r}, 'rb').read()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("(ScaleByRmsState(nu=[tensor([0., 0.])]), TraceState(")
