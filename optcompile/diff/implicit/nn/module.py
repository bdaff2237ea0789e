r"""``ImplicitMetaGradientModule``: an inner problem as a module, with implicit meta-gradients.

A subclass holds inner parameters (its ordinary parameters) and meta-parameters (what the
constructor received that requires grad), and writes

- ``solve(*input)``: any algorithm that moves the inner parameters to the optimum;
- ``objective(*input)`` (a scalar to minimise), or ``optimality(*input)`` (a residual per
  inner parameter, zero at the solution: a KKT condition, or ``T(x) - x`` for a fixed point).

After ``solve``, the inner parameters are functions of the meta-parameters by the implicit
function theorem: an outer loss built from them back-propagates into the meta-parameters.

Beyond TorchOpt: with ``objective`` only, the optimality is its gradient and its Jacobian is
the (symmetric) Hessian, so the default adjoint solver is plain CG, not CG on the normal
equations (half the matvecs, the condition number not squared); any meta-parameter,
including a hyper-parameter of the inner problem such as a regularisation strength, gets its
hypergradient (#163); meta-modules in ``eval()`` mode count (#144).
"""

from __future__ import annotations

import abc
import functools
import inspect
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from optcompile import linear_solve as _linear_solve
from optcompile.diff.implicit.decorator import custom_root
from optcompile.nn.module import MetaGradientModule
from optcompile.nn.stateless import reparametrize, swap_state

__all__ = ["ImplicitMetaGradientModule"]

TupleOfTensors = tuple[torch.Tensor, ...]


def _named_flat(module: ImplicitMetaGradientModule) -> tuple[tuple, tuple, tuple, tuple]:
    named_params = tuple(module.named_parameters())
    named_meta_params = tuple(module.named_meta_parameters())
    if not named_params:
        raise RuntimeError(
            f"{type(module).__name__} has no parameters: the inner problem needs unknowns "
            "(tensors that require grad, not passed to the constructor)"
        )
    if not named_meta_params:
        raise RuntimeError(
            f"{type(module).__name__} has no meta-parameters: pass the tensors or modules to "
            "differentiate to the constructor (with requires_grad=True)"
        )
    names, params = zip(*named_params, strict=True)
    meta_names, meta_params = zip(*named_meta_params, strict=True)
    return names, params, meta_names, meta_params


def _stateless(method: str) -> Callable[..., Any]:
    """``fn(params, meta_params, names, meta_names, self, *input)``: ``self.<method>(*input)``
    computed with the given tensors in place of the module's."""

    def fn(
        flat_params: TupleOfTensors,
        flat_meta_params: TupleOfTensors,
        params_names: Iterable[str],
        meta_params_names: Iterable[str],
        self: ImplicitMetaGradientModule,
        /,
        *input: Any,
        **kwargs: Any,
    ) -> Any:
        named = itertools.chain(
            zip(params_names, flat_params, strict=True),
            zip(meta_params_names, flat_meta_params, strict=True),
        )
        with reparametrize(self, named):
            return getattr(self, method)(*input, **kwargs)

    fn.__name__ = f"{method}"
    return fn


def _optimality_from_objective(self: ImplicitMetaGradientModule, *input: Any, **kwargs: Any):
    r"""The gradient of ``objective`` in the inner parameters: :math:`\nabla_x f(x, \theta)`."""
    names, params, meta_names, meta_params = _named_flat(self)
    grad = torch.func.grad(_stateless("objective"), argnums=0)
    return grad(params, meta_params, names, meta_names, self, *input, **kwargs)


def _enable_implicit_gradients(cls: type[ImplicitMetaGradientModule]) -> None:
    cls_solve = cls.__dict__.get("solve")
    if cls_solve is None:
        # Inherited from a subclass that wrapped it already: wrap the original again, with
        # this class's optimality and linear solver (TorchOpt raises here).
        cls_solve = getattr(cls.solve, "__wrapped__", cls.solve)
    elif getattr(cls_solve, "__implicit_gradients_enabled__", False):
        raise TypeError("Implicit gradients are already enabled for the `solve` method.")

    @custom_root(_stateless("optimality"), argnums=1, has_aux=True, solve=cls.linear_solve)
    def stateless_solver_fn(
        flat_params: TupleOfTensors,
        flat_meta_params: TupleOfTensors,
        params_names: Iterable[str],
        meta_params_names: Iterable[str],
        self: ImplicitMetaGradientModule,
        /,
        *input: Any,
        **kwargs: Any,
    ) -> tuple[TupleOfTensors, Any]:
        output = cls_solve(self, *input, **kwargs)
        named = tuple(self.named_parameters())
        if tuple(name for name, _ in named) != tuple(params_names):
            raise RuntimeError(
                f"{type(self).__name__}.solve() changed which parameters the module has "
                f"(before: {list(params_names)}, after: {[n for n, _ in named]}); a tensor "
                "that requires grad assigned as an attribute becomes a parameter: compute it "
                "in a method instead"
            )
        return tuple(p.detach() for _, p in named), output

    @functools.wraps(cls_solve)
    def wrapped(self: ImplicitMetaGradientModule, *input: Any, **kwargs: Any) -> Any:
        names, params, meta_names, meta_params = _named_flat(self)
        # The initial guess enters detached: the root does not depend on it.
        init = tuple(p.detach() for p in params)
        optimal, output = stateless_solver_fn(
            init, meta_params, names, meta_names, self, *input, **kwargs
        )
        swap_state(self, zip(names, optimal, strict=True))
        return output

    wrapped.__implicit_gradients_enabled__ = True  # type: ignore[attr-defined]
    cls.solve = wrapped  # type: ignore[method-assign]


def _check_method(cls: type, name: str) -> None:
    static = inspect.getattr_static(cls, name)
    if isinstance(static, staticmethod):
        raise TypeError(f"method {name}() must not be a staticmethod.")
    if isinstance(static, classmethod):
        raise TypeError(f"method {name}() must not be a classmethod.")
    if not callable(static):
        raise TypeError(f"method {name}() must be callable.")


class ImplicitMetaGradientModule(MetaGradientModule, metaclass=abc.ABCMeta):
    """Base class for inner problems differentiated implicitly (TorchOpt's API).

    Subclass keyword ``linear_solve``: the adjoint solver (default: ``solve_cg()`` when only
    ``objective`` is written, ``solve_normal_cg()`` for a custom ``optimality``).

    Examples:
        >>> class Ridge(ImplicitMetaGradientModule):
        ...     def __init__(self, log_lam, n):
        ...         super().__init__()
        ...         self.log_lam = log_lam  # a meta-parameter
        ...         self.w = torch.nn.Parameter(torch.zeros(n))  # the inner unknown
        ...     def objective(self, X, y):
        ...         return ((X @ self.w - y) ** 2).sum() + self.log_lam.exp() * self.w @ self.w
        ...     def solve(self, X, y):
        ...         A = X.T @ X + self.log_lam.exp() * torch.eye(X.shape[1])
        ...         self.w.copy_(torch.linalg.solve(A, X.T @ y))
        >>> log_lam = torch.tensor(0.0, requires_grad=True)
        >>> model = Ridge(log_lam, 2)
        >>> model.solve(torch.eye(2), torch.ones(2))
        >>> model.w.sum().backward()  # d w*(lam) / d log_lam, implicitly
        >>> round(log_lam.grad.item(), 4)
        -0.5
    """

    _custom_optimality: bool
    _custom_objective: bool
    linear_solve: Callable[..., Any] | None

    def __init_subclass__(cls, linear_solve: Callable[..., Any] | None = None) -> None:
        """Check the subclass's methods and wrap its ``solve`` with implicit gradients."""
        super().__init_subclass__()
        base = ImplicitMetaGradientModule
        optimality = inspect.getattr_static(cls, "optimality")
        cls._custom_optimality = optimality not in (
            inspect.getattr_static(base, "optimality"),
            _optimality_from_objective,  # derived for a parent class
        )
        cls._custom_objective = inspect.getattr_static(cls, "objective") is not (
            inspect.getattr_static(base, "objective")
        )
        if cls._custom_optimality:
            _check_method(cls, "optimality")
            default = _linear_solve.solve_normal_cg
        elif cls._custom_objective:
            _check_method(cls, "objective")
            cls.optimality = _optimality_from_objective  # type: ignore[method-assign]
            default = _linear_solve.solve_cg  # the Hessian is symmetric
        else:
            raise TypeError(
                "ImplicitMetaGradientModule requires either an optimality() method or an "
                "objective() method"
            )
        cls.linear_solve = linear_solve if linear_solve is not None else default()
        _enable_implicit_gradients(cls)

    @abc.abstractmethod
    def solve(self, *input: Any, **kwargs: Any) -> Any:
        """Solve the inner problem: move ``self.parameters()`` to the optimum.

        Runs without autograd recording (use ``torch.enable_grad()`` to differentiate the
        objective inside) and should update only the inner parameters, e.g. with
        ``loss.backward(inputs=params)`` or ``torch.autograd.grad(loss, params)``.
        """
        raise NotImplementedError

    def optimality(self, *input: Any, **kwargs: Any) -> TupleOfTensors:
        r"""The optimality residual, one tensor per ``self.parameters()``, zero at the
        solution: :math:`\nabla_x f(x, \theta)` (derived from ``objective`` if not written),
        or :math:`T(x, \theta) - x` for a fixed point."""
        raise NotImplementedError

    def objective(self, *input: Any, **kwargs: Any) -> torch.Tensor:
        """The inner objective, a scalar tensor; needed only when ``optimality`` is not
        written."""
        raise NotImplementedError
