"""Torch-style optimizer classes (``optcompile.Adam`` ...) against ``torch.optim``, float64.

Each class is driven exactly like a ``torch.optim`` optimizer (``zero_grad``, ``backward``,
``step``) side by side with the torch reference on the same small MLP; the parameters must agree
after every run. The signatures are pinned against TorchOpt 0.7.3 (the classes are generated).
"""

from __future__ import annotations

import copy
import inspect

import optree
import pytest
import torch
from torch import nn

import optcompile as oc
from optcompile.schedule import linear_schedule

STEPS = 20


# Numerics are the subject here, not compilation: kernels run on the eager oracle.
pytestmark = pytest.mark.usefixtures("eager_backend")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, dtype=torch.float64, generator=generator)
    y = torch.randn(16, 2, dtype=torch.float64, generator=generator)
    return x, y


def _train(model: nn.Module, optimizer, steps: int, scheduler=None) -> None:
    x, y = _data()
    for _ in range(steps):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def _assert_same_params(model: nn.Module, reference: nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")


# (optcompile class, its kwargs, torch.optim class, its kwargs)
CASES = [
    (oc.SGD, {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1}),
    (
        oc.SGD,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
    ),
    (
        oc.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    ),
    (
        oc.SGD,
        {"lr": 0.01, "momentum": 0.5, "maximize": True},
        torch.optim.SGD,
        {"lr": 0.01, "momentum": 0.5, "maximize": True},
    ),
    (oc.Adam, {"lr": 0.01}, torch.optim.Adam, {"lr": 0.01}),
    (
        oc.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    ),
    (oc.Adam, {"lr": 0.01, "maximize": True}, torch.optim.Adam, {"lr": 0.01, "maximize": True}),
    (oc.AdamW, {"lr": 0.01}, torch.optim.AdamW, {"lr": 0.01}),
    (
        oc.AdamW,
        {"lr": 0.01, "weight_decay": 0.1},
        torch.optim.AdamW,
        {"lr": 0.01, "weight_decay": 0.1},
    ),
    (oc.Adamax, {}, torch.optim.Adamax, {}),  # both default to lr=2e-3, eps=1e-8
    (
        oc.AdaMax,
        {"lr": 0.01, "weight_decay": 0.01},
        torch.optim.Adamax,
        {"lr": 0.01, "weight_decay": 0.01},
    ),
    (oc.Adagrad, {"lr": 0.1}, torch.optim.Adagrad, {"lr": 0.1}),
    (
        oc.AdaGrad,
        {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
        torch.optim.Adagrad,
        {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01, "initial_accumulator_value": 0.1},
    ),
    (oc.Adadelta, {}, torch.optim.Adadelta, {"lr": 1.0}),  # TorchOpt's class default lr is 1.0
    (
        oc.AdaDelta,
        {"rho": 0.8, "weight_decay": 0.01},
        torch.optim.Adadelta,
        {"lr": 1.0, "rho": 0.8, "weight_decay": 0.01},
    ),
    # 20 steps cover both RAdam branches: rho_t <= 5 (un-adapted) until step 5, rectified after.
    (oc.RAdam, {"lr": 0.01}, torch.optim.RAdam, {"lr": 0.01}),
    (
        oc.RAdam,
        {"lr": 0.01, "weight_decay": 0.01},
        torch.optim.RAdam,
        {"lr": 0.01, "weight_decay": 0.01},
    ),
    (oc.RMSprop, {"lr": 0.01}, torch.optim.RMSprop, {"lr": 0.01}),
    (
        oc.RMSProp,
        {"lr": 0.01, "alpha": 0.9, "centered": True, "momentum": 0.9, "weight_decay": 0.01},
        torch.optim.RMSprop,
        {"lr": 0.01, "alpha": 0.9, "centered": True, "momentum": 0.9, "weight_decay": 0.01},
    ),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "torch_cls", "torch_kwargs"),
    CASES,
    ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)],
)
def test_matches_torch_optim(cls, kwargs, torch_cls, torch_kwargs):
    model, reference = _mlp(), _mlp()
    _train(model, cls(model.parameters(), **kwargs), STEPS)
    _train(reference, torch_cls(reference.parameters(), **torch_kwargs), STEPS)
    _assert_same_params(model, reference)


def test_alias_spellings_are_the_same_classes():
    assert oc.AdaMax is oc.Adamax
    assert oc.AdaGrad is oc.Adagrad
    assert oc.AdaDelta is oc.Adadelta
    assert oc.RMSProp is oc.RMSprop
    assert oc.MetaAdaMax is oc.MetaAdamax
    assert oc.MetaAdaGrad is oc.MetaAdagrad
    assert oc.MetaAdaDelta is oc.MetaAdadelta
    assert oc.MetaRMSProp is oc.MetaRMSprop


def test_parameter_without_gradient_is_skipped_like_torch():
    """A parameter whose .grad is None (not used yet) is neither moved nor counted, as in torch.

    torch.optim.Adam (and TorchOpt, whose step counters are per leaf) start a parameter's step
    count at its first gradient, so its bias correction uses its own t, not the optimizer's.
    """
    torch.manual_seed(0)
    init = (torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    ours = [t.clone().requires_grad_() for t in init]
    theirs = [t.clone().requires_grad_() for t in init]
    optimizers = [(ours, oc.Adam(ours, lr=0.1)), (theirs, torch.optim.Adam(theirs, lr=0.1))]
    for step in range(6):
        for params, optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
            loss = (params[0] ** 2).sum()
            if step >= 3:  # the second parameter joins the loss at the fourth step
                loss = loss + (params[1] ** 3).sum()
            loss.backward()
            optimizer.step()
        if step < 3:
            torch.testing.assert_close(ours[1].detach(), init[1], rtol=0, atol=0)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])


@pytest.mark.parametrize("cls", [oc.SGD, oc.Adam])
def test_linear_schedule_lr_matches_lambda_lr(cls):
    def make():
        return linear_schedule(
            init_value=0.1, end_value=0.01, transition_steps=10, transition_begin=3
        )

    kwargs = {"momentum": 0.9} if cls is oc.SGD else {}
    torch_cls = torch.optim.SGD if cls is oc.SGD else torch.optim.Adam
    model, reference = _mlp(), _mlp()
    _train(model, cls(model.parameters(), lr=make(), **kwargs), STEPS)
    schedule = make()
    torch_optimizer = torch_cls(reference.parameters(), lr=1.0, **kwargs)
    # LambdaLR multiplies the base lr (1.0) by the factor of the step count, starting at 0.
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, lambda t: float(schedule(t)))
    _train(reference, torch_optimizer, STEPS, scheduler)
    _assert_same_params(model, reference)


def test_linear_schedule_values():
    schedule = linear_schedule(
        init_value=1e-3, end_value=1e-4, transition_steps=10000, transition_begin=2000
    )
    for count, expected in [(0, 1e-3), (2000, 1e-3), (7000, 5.5e-4), (12000, 1e-4), (20000, 1e-4)]:
        assert schedule(count) == pytest.approx(expected, rel=1e-12)
        value = schedule(torch.tensor(count))
        assert float(value) == pytest.approx(expected, rel=1e-6)


def _clone_state(state):
    return optree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, state)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (oc.SGD, {"lr": 0.1, "momentum": 0.9}),
        (oc.Adam, {"lr": 0.01}),
        (oc.Adagrad, {"lr": 0.1, "lr_decay": 0.01}),
        (oc.Adadelta, {}),
        (oc.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.9}),
        (oc.Adam, {"lr": linear_schedule(0.01, 0.001, 15)}),  # a schedule adds a step count
    ],
    ids=["SGD-momentum", "Adam", "Adagrad", "Adadelta", "RMSprop-centered", "Adam-schedule"],
)
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    model = _mlp()
    optimizer = cls(model.parameters(), **kwargs)
    _train(model, optimizer, 10)

    clone = copy.deepcopy(model)
    restored = cls(clone.parameters(), **kwargs)
    restored.load_state_dict(_clone_state(optimizer.state_dict()))
    via_extract = copy.deepcopy(model)
    extracted = cls(via_extract.parameters(), **kwargs)
    oc.recover_state_dict(extracted, oc.extract_state_dict(optimizer, by="deepcopy"))

    _train(model, optimizer, 10)
    _train(clone, restored, 10)
    _train(via_extract, extracted, 10)
    for p, q, r in zip(
        model.parameters(), clone.parameters(), via_extract.parameters(), strict=True
    ):
        assert torch.equal(p, q)
        assert torch.equal(p, r)


def test_fresh_optimizer_without_the_state_diverges():
    """Control for the round trip: the loaded state is what makes the runs identical."""
    model = _mlp()
    optimizer = oc.Adam(model.parameters(), lr=0.01)
    _train(model, optimizer, 10)
    clone = copy.deepcopy(model)
    _train(model, optimizer, 5)
    _train(clone, oc.Adam(clone.parameters(), lr=0.01), 5)
    pairs = zip(model.parameters(), clone.parameters(), strict=True)
    assert not all(torch.equal(p, q) for p, q in pairs)


def test_load_state_dict_of_another_optimizer_is_refused_and_changes_nothing():
    model = _mlp()
    optimizer = oc.Adam(model.parameters(), lr=0.01)
    _train(model, optimizer, 2)
    before = optimizer.state_dict()
    other = oc.SGD(_mlp().parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(
        ValueError,
        match=r"ScaleByAdamState.* holds a TraceState\(trace, count\).*another optimizer",
    ):
        optimizer.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match=r"expected a tuple of 1 group state"):
        optimizer.load_state_dict(before[0])
    assert all(a is b for a, b in zip(optimizer.state_dict(), before, strict=True))


def test_zero_grad():
    model = _mlp()
    optimizer = oc.Adam(model.parameters(), lr=0.01)
    x, y = _data()
    ((model(x) - y) ** 2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)

    optimizer.zero_grad()  # TorchOpt's default: zero in place, keep the tensors
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())

    ((model(x) - y) ** 2).mean().backward()
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()  # no gradients at all: nothing moves
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_step_returns_the_closure_loss():
    model = _mlp()
    optimizer = oc.SGD(model.parameters(), lr=0.1)
    x, y = _data()

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert not torch.equal(next(model.parameters()), before[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda impl: oc.Optimizer(_mlp().parameters(), impl),
        lambda impl: oc.MetaOptimizer(_mlp(), impl),
        lambda impl: oc.FuncOptimizer(impl),
    ],
    ids=["Optimizer", "MetaOptimizer", "FuncOptimizer"],
)
@pytest.mark.parametrize(
    "impl",
    [lambda: 0, "adam", torch.optim.Adam, None],
    ids=["lambda", "str", "torch-class", "None"],
)
def test_impl_must_be_a_gradient_transformation(make, impl):
    with pytest.raises(TypeError, match=r"impl must be a GradientTransformation .*, got \w+"):
        make(impl)


# TorchOpt 0.7.3's class signatures: (name, kind, default) after the first argument.
# "P" is positional-or-keyword, "K" keyword-only; EMPTY marks a required argument.
EMPTY = inspect.Parameter.empty
_BETAS = (0.9, 0.999)
TORCHOPT_SIGNATURES = {
    "SGD": [
        ("lr", "P", EMPTY),
        ("momentum", "P", 0.0),
        ("weight_decay", "P", 0.0),
        ("dampening", "P", 0.0),
        ("nesterov", "P", False),
        ("maximize", "P", False),
    ],
    "Adam": [
        ("lr", "P", 1e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
        ("eps_root", "K", 0.0),
        ("maximize", "K", False),
        ("use_accelerated_op", "K", False),
    ],
    "AdamW": [
        ("lr", "P", 1e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 1e-2),
        ("eps_root", "K", 0.0),
        ("mask", "K", None),
        ("maximize", "K", False),
        ("use_accelerated_op", "K", False),
    ],
    "Adamax": [
        ("lr", "P", 2e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
    ],
    "Adagrad": [
        ("lr", "P", 1e-2),
        ("lr_decay", "P", 0.0),
        ("weight_decay", "P", 0.0),
        ("initial_accumulator_value", "P", 0.0),
        ("eps", "P", 1e-10),
        ("maximize", "K", False),
    ],
    "Adadelta": [
        ("lr", "P", 1.0),
        ("rho", "P", 0.9),
        ("eps", "P", 1e-6),
        ("weight_decay", "P", 0.0),
    ],
    "RAdam": [
        ("lr", "P", 1e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
    ],
    "RMSprop": [
        ("lr", "P", 1e-2),
        ("alpha", "P", 0.99),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
        ("momentum", "P", 0.0),
        ("centered", "P", False),
        ("initial_scale", "K", 0.0),
        ("nesterov", "K", False),
        ("maximize", "K", False),
    ],
    "MetaSGD": [
        ("lr", "P", EMPTY),
        ("momentum", "P", 0.0),
        ("weight_decay", "P", 0.0),
        ("dampening", "P", 0.0),
        ("nesterov", "P", False),
        ("moment_requires_grad", "P", True),
        ("maximize", "P", False),
    ],
    "MetaAdam": [
        ("lr", "P", 1e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
        ("eps_root", "K", 0.0),
        ("moment_requires_grad", "K", True),
        ("maximize", "K", False),
        ("use_accelerated_op", "K", False),
    ],
    "MetaAdamW": [
        ("lr", "P", 1e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 1e-2),
        ("eps_root", "K", 0.0),
        ("mask", "K", None),
        ("moment_requires_grad", "K", False),
        ("maximize", "K", False),
        ("use_accelerated_op", "K", False),
    ],
    "MetaAdamax": [
        ("lr", "P", 2e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
        ("moment_requires_grad", "K", True),
    ],
    "MetaAdagrad": [
        ("lr", "P", 1e-2),
        ("lr_decay", "P", 0.0),
        ("weight_decay", "P", 0.0),
        ("initial_accumulator_value", "P", 0.0),
        ("eps", "P", 1e-10),
        ("maximize", "K", False),
    ],
    "MetaAdadelta": [
        ("lr", "P", 1.0),
        ("rho", "P", 0.9),
        ("eps", "P", 1e-6),
        ("weight_decay", "P", 0.0),
        ("moment_requires_grad", "K", True),
    ],
    "MetaRAdam": [
        ("lr", "P", 1e-3),
        ("betas", "P", _BETAS),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
        ("moment_requires_grad", "K", True),
    ],
    "MetaRMSprop": [
        ("lr", "P", 1e-2),
        ("alpha", "P", 0.99),
        ("eps", "P", 1e-8),
        ("weight_decay", "P", 0.0),
        ("momentum", "P", 0.0),
        ("centered", "P", False),
        ("initial_scale", "K", 0.0),
        ("nesterov", "K", False),
        ("maximize", "K", False),
    ],
}
_KINDS = {"P": inspect.Parameter.POSITIONAL_OR_KEYWORD, "K": inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("name", sorted(TORCHOPT_SIGNATURES))
def test_signature_equals_torchopt(name):
    """Names, order, kinds and defaults as in TorchOpt; optcompile may only append extensions.

    The extensions are ``amsgrad`` (Adam and AdamW, default False, as in torch.optim) and
    ``backend`` (default None): being keyword-only with a default, they cannot change the
    meaning of any TorchOpt call.
    """
    params = list(inspect.signature(getattr(oc, name)).parameters.values())
    first = "module" if name.startswith("Meta") else "params"
    assert params[0].name == first and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params[0].default is EMPTY
    rest = params[1:]
    extensions = {"backend": None, "amsgrad": False}
    while rest and rest[-1].name in extensions:
        assert rest[-1].kind is inspect.Parameter.KEYWORD_ONLY
        assert rest[-1].default is extensions[rest[-1].name]
        rest = rest[:-1]
    got = [(p.name, p.kind, p.default) for p in rest]
    expected = [(n, _KINDS[k], d) for n, k, d in TORCHOPT_SIGNATURES[name]]
    assert got == expected


def test_positional_arguments_bind_as_in_torchopt():
    model = _mlp()
    # MetaSGD(module, lr, momentum, weight_decay, dampening, nesterov, moment_requires_grad,
    #         maximize), all positional in TorchOpt.
    meta = oc.MetaSGD(model, 0.1, 0.9, 0.0, 0.0, True, False, False)
    trace_leaves = [
        t
        for t in optree.tree_leaves(meta.state_dict())
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    assert trace_leaves and not any(t.requires_grad for t in trace_leaves)
    oc.SGD(model.parameters(), 0.1, 0.9, 0.01, 0.0, False, True)  # ... nesterov, maximize
    with pytest.raises(TypeError, match=r"SGD\(params, lr.*too many positional arguments"):
        oc.SGD(model.parameters(), 0.1, 0.9, 0.01, 0.0, False, True, "extra")


def test_class_defaults_that_differ_from_the_functional_ones():
    meta_adamw = oc.MetaAdamW(_mlp())
    moments = [
        t
        for t in optree.tree_leaves(meta_adamw.state_dict())
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    assert moments and not any(t.requires_grad for t in moments)  # moment_requires_grad=False
    meta_adam = oc.MetaAdam(_mlp())
    moments = [
        t
        for t in optree.tree_leaves(meta_adam.state_dict())
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    assert moments and all(t.requires_grad for t in moments)  # moment_requires_grad=True
    assert inspect.signature(oc.MetaAdamax).parameters["lr"].default == 2e-3
    assert inspect.signature(oc.MetaAdamax).parameters["eps"].default == 1e-8
    assert inspect.signature(oc.adamax).parameters["eps"].default == 1e-6
    assert inspect.signature(oc.Adadelta).parameters["lr"].default == 1.0
    assert inspect.signature(oc.adadelta).parameters["lr"].default == 1e-3
    assert inspect.signature(oc.RAdam).parameters["eps"].default == 1e-8
    assert inspect.signature(oc.radam).parameters["eps"].default == 1e-6


# ------------------------------------------------------------------ found in review


def test_a_classic_step_in_inference_mode_does_not_break_later_meta_steps():
    p = torch.ones(3, requires_grad=True)
    classic = oc.Adam([p], lr=0.1, backend="eager")
    p.grad = torch.ones(3)
    with torch.inference_mode():
        classic.step()
    net = nn.Linear(3, 1)
    meta = oc.MetaAdam(net, lr=0.1, backend="eager")
    meta.step(net(torch.ones(2, 3)).sum())
    net(torch.ones(2, 3)).sum().backward()


def test_classic_optimizer_given_a_module_says_to_pass_its_parameters():
    with pytest.raises(TypeError, match=r"pass module\.parameters\(\)"):
        oc.Adam(nn.Linear(2, 2))
