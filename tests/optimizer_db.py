"""The test database: per registered optimizer, its references, flags, error inputs and properties.

Keyed on :func:`optcompile.registry.optimizers` (PyTorch's ``OptimizerInfo`` database in spirit):
``tests/test_optimizer_db.py`` iterates it, and fails when a registered optimizer has no entry.

- ``references``: what each alias is checked against over 50 float64 steps: a ``torch.optim``
  class, an ``optax`` function (float64 jax), or a closed form; ``kwargs`` are the alias's.
- ``flags``: the boolean / structural options the optimizer supports; each appears in a
  reference with a non-default value.
- ``metas``: meta-optimizer cases: the meta class's keyword arguments and whether the
  meta-gradient w.r.t. the data is *zero by convention* (a sign in the path; documented in the
  optimizer's docstring) or checked against float64 finite differences. ``straight_through``
  cases are biased by design: only finiteness and non-zero are checked.
- ``errors``: (alias kwargs, exception, message pattern), raised at construction.
- ``inductor``: in the small compiled subset (compilation is slow on CI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import optim

from optcompile.errors import HyperparameterError


@dataclass(frozen=True)
class Reference:
    """One 50-step comparison: the alias with ``kwargs`` against a reference implementation."""

    id: str
    kwargs: dict[str, Any]
    torch: Callable[[list[torch.Tensor]], optim.Optimizer] | None = None
    optax: Callable[[Any], Any] | None = None  # optax module -> optax transformation
    closed_form: Callable[..., Any] | None = None  # (p, g, state: dict, t) -> new p, per leaf
    sign: float = 1.0  # -1: maximize (the reference ascends the negated loss)


@dataclass(frozen=True)
class Meta:
    """One meta-optimizer case: ``Meta<Class>(net, **kwargs)`` for ``steps`` inner steps."""

    kwargs: dict[str, Any]
    zero: bool = False  # meta-gradient w.r.t. the data is zero by convention
    straight_through: bool = False  # biased estimator: non-zero and finite only
    steps: int = 3


@dataclass(frozen=True)
class Entry:
    references: tuple[Reference, ...]
    metas: tuple[Meta, ...]
    flags: tuple[str, ...] = ()
    errors: tuple[tuple[dict[str, Any], type, str], ...] = ()
    inductor: bool = False
    zero_grad_kwargs: dict[str, Any] = field(default_factory=dict)


# Closed forms, written out in plain torch from the papers / optax's definitions, one tensor at a
# time: (p, g, state, t) -> new p, with ``state`` a dict the function fills (t = 1, 2, ...). They
# keep the optax-only optimizers checked where jax is not installed (CI).


def _lion(lr, b1, b2, wd):
    def step(p, g, s, t):
        m = s.get("m", torch.zeros_like(p))
        u = torch.sign(b1 * m + (1 - b1) * g)
        s["m"] = b2 * m + (1 - b2) * g
        return p - lr * (u + wd * p)

    return step


def _sign_sgd(lr):
    return lambda p, g, s, t: p - lr * torch.sign(g)


def _adabelief(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    def step(p, g, s, t):
        m = s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
        v = s["v"] = b2 * s.get("v", 0) + (1 - b2) * (g - m) ** 2 + eps_root
        return p - lr * (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps)

    return step


def _yogi(lr, b1=0.9, b2=0.999, eps=1e-3, init=1e-6):
    def step(p, g, s, t):
        m = s["m"] = b1 * s.get("m", init) + (1 - b1) * g
        v0 = s.get("v", torch.full_like(p, init))
        v = s["v"] = v0 - (1 - b2) * torch.sign(v0 - g**2) * g**2
        return p - lr * (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps)

    return step


def _adan(lr, wd, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8):
    def step(p, g, s, t):
        diff = g - s["g"] if t > 1 else torch.zeros_like(g)
        m = s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
        v = s["v"] = b2 * s.get("v", 0) + (1 - b2) * diff
        n = s["n"] = b3 * s.get("n", 0) + (1 - b3) * (g + (1 - b2) * diff) ** 2
        s["g"] = g
        m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
        u = (m_hat + (1 - b2) * v_hat) / (torch.sqrt(n_hat + eps_root) + eps)
        return p - lr * (u + wd * p)

    return step


def _trust(p, r, coefficient=1.0, eps=0.0):
    """optax's trust ratio of one tensor: 1 where a norm is 0."""
    pn, rn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(r)
    return 1.0 if pn == 0 or rn == 0 else coefficient * pn / (rn + eps)


def _lamb(lr, wd, b1=0.9, b2=0.999, eps=1e-6):
    def step(p, g, s, t):
        m = s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
        v = s["v"] = b2 * s.get("v", 0) + (1 - b2) * g**2
        r = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + eps) + wd * p
        return p - lr * _trust(p, r) * r

    return step


def _lars(lr, wd, coefficient, momentum, nesterov=False):
    def step(p, g, s, t):
        r = g + wd * p
        u = -lr * _trust(p, r, coefficient) * r
        b = s["b"] = momentum * s.get("b", 0) + u
        return p + (u + momentum * b if nesterov else b)

    return step


def _novograd(lr, wd, b1=0.9, b2=0.25, eps=1e-6):
    def step(p, g, s, t):
        sq = (g**2).sum()
        nu = s["nu"] = sq if t == 1 else b2 * s["nu"] + (1 - b2) * sq
        d = g / (torch.sqrt(nu) + eps) + wd * p
        m = s["m"] = d if t == 1 else b1 * s["m"] + d
        return p - lr * m

    return step


def _betas_error(name: str = "betas") -> tuple:
    return ({name: (1.0, 0.9)}, HyperparameterError, rf"^{name}\[0\]=1\.0 ")


DB: dict[str, Entry] = {
    "sgd": Entry(
        references=(
            Reference("plain", {"lr": 0.05}, torch=lambda ps: optim.SGD(ps, lr=0.05)),
            Reference(
                "nesterov-wd",
                {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.02, "nesterov": True},
                torch=lambda ps: optim.SGD(
                    ps, lr=0.05, momentum=0.9, weight_decay=0.02, nesterov=True
                ),
            ),
            Reference(
                "maximize",
                {"lr": 0.05, "momentum": 0.5, "maximize": True},
                torch=lambda ps: optim.SGD(ps, lr=0.05, momentum=0.5, maximize=True),
                sign=-1.0,
            ),
        ),
        metas=(Meta({"lr": 0.1, "momentum": 0.9}),),
        flags=("nesterov", "maximize"),
        errors=(({"lr": -0.1}, HyperparameterError, r"^lr=-0\.1 "),),
    ),
    "adam": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.05, "weight_decay": 0.01},
                torch=lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.01),
                optax=lambda ox: ox.chain(ox.add_decayed_weights(0.01), ox.adam(0.05)),
            ),
            Reference(
                "amsgrad-maximize",
                {"lr": 0.05, "amsgrad": True, "maximize": True},
                torch=lambda ps: optim.Adam(ps, lr=0.05, amsgrad=True, maximize=True),
                sign=-1.0,
            ),
        ),
        metas=(Meta({"lr": 0.05}), Meta({"lr": 0.05, "amsgrad": True})),
        flags=("amsgrad", "maximize"),
        errors=(_betas_error(), ({"eps": -1.0}, HyperparameterError, r"^eps=-1\.0 ")),
    ),
    "adamw": Entry(
        references=(
            Reference(
                "amsgrad",
                {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True},
                torch=lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.1, amsgrad=True),
            ),
        ),
        metas=(Meta({"lr": 0.05, "weight_decay": 0.1}),),
        flags=("amsgrad",),
        errors=(_betas_error(),),
    ),
    "adamax": Entry(
        references=(
            Reference("plain", {"lr": 0.05}, torch=lambda ps: optim.Adamax(ps, lr=0.05, eps=1e-6)),
        ),
        metas=(Meta({"lr": 0.05}),),
        errors=(_betas_error(),),
    ),
    "radam": Entry(
        references=(
            Reference("plain", {"lr": 0.05}, torch=lambda ps: optim.RAdam(ps, lr=0.05, eps=1e-6)),
        ),
        metas=(Meta({"lr": 0.05}, steps=7),),
        errors=(_betas_error(),),
    ),
    "adagrad": Entry(
        references=(
            Reference(
                "lr_decay",
                {"lr": 0.1, "lr_decay": 0.01},
                torch=lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.01),
            ),
        ),
        metas=(Meta({"lr": 0.1}),),
        errors=(({"lr_decay": -1.0}, HyperparameterError, r"^lr_decay=-1\.0 "),),
    ),
    "adadelta": Entry(
        references=(Reference("plain", {"lr": 1.0}, torch=lambda ps: optim.Adadelta(ps, lr=1.0)),),
        metas=(Meta({"lr": 1.0}),),
        errors=(({"rho": 1.5}, HyperparameterError, r"^rho=1\.5 "),),
    ),
    "rmsprop": Entry(
        references=(
            Reference(
                "centered-momentum",
                {"lr": 0.01, "centered": True, "momentum": 0.9},
                torch=lambda ps: optim.RMSprop(ps, lr=0.01, centered=True, momentum=0.9),
            ),
        ),
        metas=(Meta({"lr": 0.01}),),
        flags=("centered",),
        errors=(({"alpha": -0.1}, HyperparameterError, r"^alpha=-0\.1 "),),
    ),
    "lion": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.01, "weight_decay": 0.1},
                optax=lambda ox: ox.lion(0.01, weight_decay=0.1),
                closed_form=_lion(0.01, 0.9, 0.99, 0.1),
            ),
            Reference(
                "straight-through",
                {"lr": 0.01, "betas": (0.8, 0.95), "straight_through": True},
                optax=lambda ox: ox.lion(0.01, b1=0.8, b2=0.95, weight_decay=0.0),
                closed_form=_lion(0.01, 0.8, 0.95, 0.0),
            ),
        ),
        metas=(
            Meta({"lr": 0.01}, zero=True),
            Meta({"lr": 0.01, "straight_through": True}, straight_through=True),
        ),
        flags=("straight_through",),
        errors=(({"betas": (0.9, 1.5)}, HyperparameterError, r"^betas\[1\]=1\.5 "),),
        inductor=True,
    ),
    "sign_sgd": Entry(
        references=(
            Reference(
                "plain",
                {"lr": 0.01},
                optax=lambda ox: ox.sign_sgd(0.01),
                closed_form=_sign_sgd(0.01),
            ),
            Reference(
                "straight-through",
                {"lr": 0.01, "straight_through": True},
                optax=lambda ox: ox.sign_sgd(0.01),
                closed_form=_sign_sgd(0.01),
            ),
        ),
        metas=(
            Meta({"lr": 0.01}, zero=True),
            Meta({"lr": 0.01, "straight_through": True}, straight_through=True),
        ),
        flags=("straight_through",),
        errors=(({"lr": -1.0}, HyperparameterError, r"^lr=-1\.0 "),),
    ),
    "adabelief": Entry(
        references=(
            Reference(
                "plain",
                {"lr": 0.05},
                optax=lambda ox: ox.adabelief(0.05),
                closed_form=_adabelief(0.05),
            ),
        ),
        metas=(Meta({"lr": 0.05}),),
        errors=(_betas_error(), ({"eps_root": -1.0}, HyperparameterError, r"^eps_root=-1")),
    ),
    "yogi": Entry(
        references=(
            Reference(
                "plain", {"lr": 0.05}, optax=lambda ox: ox.yogi(0.05), closed_form=_yogi(0.05)
            ),
        ),
        metas=(Meta({"lr": 0.05}),),
        errors=(_betas_error(),),
        inductor=True,
    ),
    "nadam": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.05, "weight_decay": 0.01},
                torch=lambda ps: optim.NAdam(ps, lr=0.05, weight_decay=0.01),
            ),
        ),
        metas=(Meta({"lr": 0.05}),),
        errors=(_betas_error(), ({"momentum_decay": -1.0}, HyperparameterError, "^momentum_decay")),
    ),
    "nadamw": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.05, "weight_decay": 0.1},
                torch=lambda ps: optim.NAdam(
                    ps, lr=0.05, weight_decay=0.1, decoupled_weight_decay=True
                ),
            ),
        ),
        metas=(Meta({"lr": 0.05, "weight_decay": 0.1}),),
        errors=(_betas_error(),),
    ),
    "adan": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.05, "weight_decay": 0.01},
                optax=lambda ox: ox.adan(0.05, weight_decay=0.01),
                closed_form=_adan(0.05, 0.01),
            ),
        ),
        metas=(Meta({"lr": 0.05}),),
        errors=(
            ({"betas": (0.9, 0.9)}, TypeError, r"^betas=\(0\.9, 0\.9\) must be a triple"),
            ({"betas": (0.9, 0.9, 1.0)}, HyperparameterError, r"^betas\[2\]=1\.0 "),
        ),
    ),
    "rprop": Entry(
        references=(
            Reference("plain", {"lr": 0.01}, torch=lambda ps: optim.Rprop(ps, lr=0.01)),
            Reference(
                "maximize",
                {"lr": 0.02, "etas": (0.4, 1.5), "maximize": True},
                torch=lambda ps: optim.Rprop(ps, lr=0.02, etas=(0.4, 1.5), maximize=True),
                sign=-1.0,
            ),
        ),
        metas=(Meta({"lr": 0.01}, zero=True),),
        flags=("maximize",),
        errors=(({"etas": (0.5,)}, TypeError, r"^etas=\(0\.5,\) must be a pair"),),
    ),
    # Per-leaf statistics (optcompile.leafstats): norms per parameter tensor.
    "lamb": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.05, "weight_decay": 0.01},
                optax=lambda ox: ox.lamb(0.05, weight_decay=0.01),
                closed_form=_lamb(0.05, 0.01),
            ),
        ),
        metas=(Meta({"lr": 0.05, "weight_decay": 0.01}),),
        errors=(_betas_error(), ({"eps_root": -1.0}, HyperparameterError, r"^eps_root=-1")),
        inductor=True,
    ),
    "lars": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.5, "weight_decay": 0.01, "trust_coefficient": 0.02},
                optax=lambda ox: ox.lars(0.5, weight_decay=0.01, trust_coefficient=0.02),
                closed_form=_lars(0.5, 0.01, 0.02, 0.9),
            ),
            Reference(
                "nesterov",
                {"lr": 0.5, "trust_coefficient": 0.02, "momentum": 0.5, "nesterov": True},
                optax=lambda ox: ox.lars(0.5, trust_coefficient=0.02, momentum=0.5, nesterov=True),
                closed_form=_lars(0.5, 0.0, 0.02, 0.5, nesterov=True),
            ),
            Reference(
                "masks",
                {
                    "lr": 0.5,
                    "weight_decay": 0.01,
                    "trust_coefficient": 0.02,
                    "weight_decay_mask": [True, False, True, True],
                    "trust_ratio_mask": [True, True, False, True],
                },
                optax=lambda ox: ox.lars(
                    0.5,
                    weight_decay=0.01,
                    weight_decay_mask=[True, False, True, True],
                    trust_coefficient=0.02,
                    trust_ratio_mask=[True, True, False, True],
                ),
            ),
        ),
        metas=(Meta({"lr": 1.0, "trust_coefficient": 0.02, "weight_decay": 0.01}),),
        flags=("nesterov", "weight_decay_mask", "trust_ratio_mask"),
        errors=(({"trust_coefficient": -1.0}, HyperparameterError, r"^trust_coefficient=-1\.0 "),),
    ),
    "novograd": Entry(
        references=(
            Reference(
                "wd",
                {"lr": 0.05, "weight_decay": 0.01},
                optax=lambda ox: ox.novograd(0.05, weight_decay=0.01),
                closed_form=_novograd(0.05, 0.01),
            ),
        ),
        metas=(Meta({"lr": 0.05}),),
        errors=(_betas_error(),),
    ),
}
