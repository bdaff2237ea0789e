"""TorchOpt's functional optimizers, each a chain of rules that runs as one fused kernel.

Every alias ends with ``scale_by_neg_lr``: the update returned is the delta to add to the
parameters (``apply_updates``). ``lr`` may be a number, a 0-d tensor (``requires_grad=True``
gives its hypergradient) or a schedule ``count -> lr``.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from optcompile import transform as _transform
from optcompile.alias import utils as utils
from optcompile.alias.utils import _flip_and_decay, _get_use_chain_flat, _neg_lr, params_shaped
from optcompile.base import GradientTransformation
from optcompile.combine import ChainedGradientTransformation
from optcompile.errors import HyperparameterError
from optcompile.fused import from_rule
from optcompile.lowering.check import numbers_of
from optcompile.rules import adam as _adam
from optcompile.rules import rms as _rms
from optcompile.rules import sgd as _sgd

__all__ = ["sgd", "adam", "adamw", "adamax", "adagrad", "adadelta", "radam", "rmsprop"]


def _check(
    name: str, value: Any, low: float, high: float = float("inf"), *, high_open: bool = False
) -> None:
    """Raise HyperparameterError naming ``name`` unless ``low <= value <= high`` (or < high)."""
    values = numbers_of(value)
    if values is None:
        if callable(value) and not isinstance(value, torch.Tensor):
            return  # a schedule: its values are not known in advance
        raise TypeError(f"{name}={value!r} must be a real number or a 0-d tensor")
    above = all(v >= low for v in values)
    below = all(v < high if high_open else v <= high for v in values)
    if not (above and below):
        domain = (
            f"[{low:g}, {high:g}{')' if high_open else ']'}"
            if high != float("inf")
            else (f">= {low:g}")
        )
        raise HyperparameterError(name, value, domain)


def _check_betas(betas: Any) -> tuple[Any, Any]:
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"betas={betas!r} must be a pair (beta1, beta2)")
    _check("betas[0]", betas[0], 0.0, 1.0, high_open=True)
    _check("betas[1]", betas[1], 0.0, 1.0, high_open=True)
    return betas[0], betas[1]


def _is_zero(value: Any) -> bool:
    return isinstance(value, numbers.Real) and value == 0


def _chain(*members: GradientTransformation | None) -> GradientTransformation:
    # Always a chain (even of one member): TorchOpt's aliases have tuple states, which the seed
    # prints as `((EmptyState(),),)` for MetaSGD. With the chain-flat switch off (a TorchOpt
    # testing hook, see alias.utils) the state's buffers take the params' structure.
    chained = ChainedGradientTransformation(*(m for m in members if m is not None), opaque=True)
    return chained if _get_use_chain_flat() else params_shaped(chained)


def _preconditioned(
    rule: Any,
    *,
    lr: Any,
    weight_decay: Any,
    maximize: bool = False,
    backend: str | None,
    rule_backend: str | None = None,
    decoupled_decay: GradientTransformation | None = None,
    **hypers: Any,
) -> GradientTransformation:
    """The shape of every adaptive alias: sign flip / L2 decay -> ``rule`` -> decay -> -lr.

    ``rule_backend`` (default ``backend``) places the rule and the -lr scaling that fuses with
    it, e.g. on the native kernel; ``decoupled_decay`` is AdamW's decay after the rule.
    """
    _check("lr", lr, 0.0)
    _check("weight_decay", weight_decay, 0.0)
    rule_backend = backend if rule_backend is None else rule_backend
    return _chain(
        _flip_and_decay(0.0 if decoupled_decay else weight_decay, maximize, backend),
        from_rule(rule, backend=rule_backend, **hypers),
        decoupled_decay,
        _neg_lr(lr, backend if decoupled_decay else rule_backend),
    )


def sgd(
    lr: Any,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    .. math:: b_t = \mu b_{t-1} + (1-\tau)(g + \lambda p) \;(b_1 = g_1 + \lambda p), \quad
        \Delta p = -\eta\, b_t \;\text{or}\; -\eta (g + \mu b_t) \text{ (Nesterov)}

    Raises:
        HyperparameterError: a negative lr, momentum or weight_decay; dampening outside [0, 1].
        ValueError: nesterov without momentum, or with dampening.
    """
    _check("lr", lr, 0.0)
    _check("momentum", momentum, 0.0)
    _check("dampening", dampening, 0.0, 1.0)
    _check("weight_decay", weight_decay, 0.0)
    if nesterov and (numbers_of(momentum) == [0.0] or numbers_of(dampening) != [0.0]):
        raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
    momentum_tx = None
    if not _is_zero(momentum):
        rule = _sgd.trace_nesterov if nesterov else _sgd.trace
        momentum_tx = from_rule(
            rule,
            momentum=momentum,
            dampening=dampening,
            moment_requires_grad=moment_requires_grad,
            backend=backend,
        )
    return _chain(
        _flip_and_decay(weight_decay, maximize, backend), momentum_tx, _neg_lr(lr, backend)
    )


def adam(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    eps_root: float = 0.0,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2014), L2 weight decay added to the gradient; as ``torch.optim.Adam``.

    .. math:: \Delta p = -\eta \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    ``use_accelerated_op=True`` asks for the native C++/CUDA kernel (``backend="native"``); the
    numbers are the same on every backend, and the backward is NaN-safe on all of them.
    """
    b1, b2 = _check_betas(betas)
    _check("eps", eps, 0.0)
    _check("eps_root", eps_root, 0.0)
    return _preconditioned(
        _adam.scale_by_adam,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        rule_backend=_accelerated(use_accelerated_op, backend),
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
    )


def adamw(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    eps_root: float = 0.0,
    mask: Any = None,
    moment_requires_grad: bool = False,
    maximize: bool = False,
    use_accelerated_op: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdamW (Loshchilov & Hutter, 2019): decoupled weight decay, as ``torch.optim.AdamW``.

    .. math:: \Delta p = -\eta \left(\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
        + \lambda p\right)

    ``mask`` (a pytree of bools like the params, or a callable params -> such a tree) limits the
    decay to the leaves where it is True.
    """
    b1, b2 = _check_betas(betas)
    _check("eps", eps, 0.0)
    _check("eps_root", eps_root, 0.0)
    decay = None
    if mask is not None or not _is_zero(weight_decay):
        decay = _transform.add_decayed_weights(weight_decay, mask, backend=backend)
    return _preconditioned(
        _adam.scale_by_adam,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        rule_backend=_accelerated(use_accelerated_op, backend),
        decoupled_decay=decay,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        moment_requires_grad=moment_requires_grad,
    )


def _accelerated(use_accelerated_op: bool, backend: str | None) -> str | None:
    """``use_accelerated_op=True`` puts Adam's kernel on the native backend.

    The members around it keep ``backend``: the native kernel covers Adam (times -lr) only, so
    weight decay or a sign flip run as their own fused unit.
    """
    if use_accelerated_op and backend is None:
        return "native"
    return backend


def adamax(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaMax (Kingma & Ba, 2014), as ``torch.optim.Adamax``."""
    b1, b2 = _check_betas(betas)
    _check("eps", eps, 0.0)
    return _preconditioned(
        _adam.scale_by_adamax,
        lr=lr,
        weight_decay=weight_decay,
        backend=backend,
        b1=b1,
        b2=b2,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
    )


def radam(
    lr: Any = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2020), as ``torch.optim.RAdam``."""
    b1, b2 = _check_betas(betas)
    _check("eps", eps, 0.0)
    return _preconditioned(
        _adam.scale_by_radam,
        lr=lr,
        weight_decay=weight_decay,
        backend=backend,
        b1=b1,
        b2=b2,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
    )


def adagrad(
    lr: Any = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaGrad (Duchi et al., 2011), as ``torch.optim.Adagrad``."""
    _check("lr_decay", lr_decay, 0.0)
    _check("initial_accumulator_value", initial_accumulator_value, 0.0)
    _check("eps", eps, 0.0)
    return _preconditioned(
        _rms.scale_by_rss,
        lr=lr,
        weight_decay=weight_decay,
        maximize=maximize,
        backend=backend,
        eps=eps,
        lr_decay=lr_decay,
        initial_accumulator_value=initial_accumulator_value,
    )


def adadelta(
    lr: Any = 1e-3,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    moment_requires_grad: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""AdaDelta (Zeiler, 2012), as ``torch.optim.Adadelta``."""
    _check("rho", rho, 0.0, 1.0)
    _check("eps", eps, 0.0)
    return _preconditioned(
        _rms.scale_by_adadelta,
        lr=lr,
        weight_decay=weight_decay,
        backend=backend,
        rho=rho,
        eps=eps,
        moment_requires_grad=moment_requires_grad,
    )


def rmsprop(
    lr: Any = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    initial_scale: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    backend: str | None = None,
) -> GradientTransformation:
    r"""RMSProp (Tieleman & Hinton, 2012), plain or centred, with momentum (torch.optim.RMSprop)."""
    _check("lr", lr, 0.0)
    _check("alpha", alpha, 0.0, 1.0)
    _check("eps", eps, 0.0)
    _check("weight_decay", weight_decay, 0.0)
    _check("momentum", momentum, 0.0)
    _check("initial_scale", initial_scale, 0.0)
    scaler = _rms.scale_by_stddev if centered else _rms.scale_by_rms
    momentum_tx = None
    if not _is_zero(momentum):
        rule = _sgd.trace_nesterov if nesterov else _sgd.trace
        momentum_tx = from_rule(rule, momentum=momentum, backend=backend)
    return _chain(
        _flip_and_decay(weight_decay, maximize, backend),
        from_rule(scaler, alpha=alpha, eps=eps, initial_scale=initial_scale, backend=backend),
        momentum_tx,
        _neg_lr(lr, backend),
    )
