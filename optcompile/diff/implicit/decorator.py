r"""``custom_root`` and ``custom_fixed_point``: give a solver implicit gradients.

A decorated ``solver_fn(init, *args)`` returns a root :math:`x^\star` of
``optimality_fn(x, *args) = 0``. Its derivative in the ``argnums`` arguments comes from the
implicit function theorem (see :mod:`optcompile.diff.implicit._root`), never from
differentiating through the solver's iterations: memory is independent of how many steps the
solver took, and the solver may be anything (closed form, L-BFGS, a black box).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import optree
import torch

from optcompile import linear_solve
from optcompile.diff.implicit._root import ImplicitRoot, RootCall

__all__ = ["custom_root", "custom_fixed_point"]


def _normalize_argnums(argnums: Any) -> tuple[int, ...]:
    values = (argnums,) if isinstance(argnums, int) else argnums
    if not isinstance(values, (tuple, list)) or not values or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in values
    ):
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    for i in values:
        if i == 0:
            raise ValueError(
                "argnums must not contain 0: argument 0 of solver_fn is the initial guess, and "
                "the root does not depend on it"
            )
        if i < 0:
            raise ValueError(f"argnums must be positive indices, got {argnums!r}")
    return tuple(values)


def _prepare(
    solver_fn: Callable[..., Any],
    signature: inspect.Signature,
    optimality_fn: Callable[..., Any],
    solve: Callable[..., Any],
    argnums: tuple[int, ...],
    has_aux: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[RootCall, list[torch.Tensor]]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    positional, keywords = list(bound.args), dict(bound.kwargs)
    for i in argnums:
        if i >= len(positional):
            raise ValueError(
                f"argnums={argnums} is out of range: {solver_fn.__name__} was called with "
                f"{len(positional)} positional arguments (indices 0 to {len(positional) - 1})"
            )
    specs, leaves_per_arg, slots, tensors, differentiable = [], [], [], [], []
    for a, value in enumerate([*positional, keywords]):
        leaves, spec = optree.tree_flatten(value)
        specs.append(spec)
        kept = []
        for j, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                slots.append((a, j))
                tensors.append(leaf)
                differentiable.append(a in argnums and leaf.is_floating_point())
                kept.append(None)
            else:
                kept.append(leaf)
        leaves_per_arg.append(kept)
        if a in argnums and not any(
            isinstance(leaf, torch.Tensor) and leaf.is_floating_point() for leaf in leaves
        ):
            raise TypeError(
                f"argument {a} of {solver_fn.__name__} is in argnums but holds no floating-point "
                f"tensor (got {type(value).__name__}); argnums must select tensors or trees of "
                "tensors to differentiate"
            )
    call = RootCall(
        solver_fn, optimality_fn, solve, has_aux, specs, leaves_per_arg, slots, differentiable
    )
    return call, tensors


def _custom_root(
    solver_fn: Callable[..., Any],
    optimality_fn: Callable[..., Any],
    solve: Callable[..., Any],
    argnums: tuple[int, ...],
    has_aux: bool,
) -> Callable[..., Any]:
    signature = inspect.signature(solver_fn)

    @functools.wraps(solver_fn)
    def wrapped_solver_fn(*args: Any, **kwargs: Any) -> Any:
        call, tensors = _prepare(
            solver_fn, signature, optimality_fn, solve, argnums, has_aux, args, kwargs
        )
        outputs = ImplicitRoot.apply(call, *tensors)
        assert call.solution_spec is not None and call.aux_spec is not None
        solution = call.solution_spec.unflatten(outputs[: call.n_solution])
        if not has_aux:
            return solution
        aux_tensors = iter(outputs[call.n_solution :])
        aux_leaves = [next(aux_tensors) if x is None else x for x in call.aux_leaves]
        return solution, call.aux_spec.unflatten(aux_leaves)

    return wrapped_solver_fn


def custom_root(
    optimality_fn: Callable[..., Any],
    argnums: int | tuple[int, ...],
    has_aux: bool = False,
    solve: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorate a root solver so that its solution gets implicit gradients.

    .. code-block:: python

        def optimality_fn(x, theta, data):  # F(x, theta) = 0 at the solution
            return torch.func.grad(inner_loss)(x, theta, data)

        @custom_root(optimality_fn, argnums=1, solve=linear_solve.solve_cg())
        def solver_fn(x0, theta, data):
            ...  # any algorithm, run without autograd
            return x_star

        x_star = solver_fn(x0, theta, data)  # d x_star / d theta by the implicit function theorem

    ``optimality_fn`` is called with the solution in place of argument 0 and the solver's
    other arguments (after binding to ``solver_fn``'s signature, defaults applied).

    Beyond TorchOpt: the root works under ``torch.func.vmap``/``jacrev``/``grad``; a
    ``create_graph=True`` backward is differentiable; solutions and arguments may be any
    trees of tensors; bad input fails with a message naming the argument.

    Args:
        optimality_fn: ``F(x, *args)``, zero at the solution, with the structure and shapes
            of ``x``.
        argnums: index or indices of ``solver_fn``'s positional arguments to differentiate
            (0, the initial guess, is not allowed).
        has_aux: ``solver_fn`` returns ``(solution, aux)``; ``aux`` is passed through
            without gradients.
        solve: a linear solver ``(matvec, b) -> x`` for the adjoint system
            (default :func:`~optcompile.linear_solve.solve_normal_cg`, which handles any
            invertible Jacobian; pass :func:`~optcompile.linear_solve.solve_cg` when
            ``optimality_fn`` is the gradient of an objective, whose Jacobian is symmetric).

    Returns:
        A decorator for ``solver_fn``.

    Raises:
        TypeError: ``argnums`` is not an int or tuple of ints, or selects an argument that
            holds no floating-point tensor.
        ValueError: ``argnums`` contains 0, a negative index, or an index past the
            arguments given (raised at call time); ``optimality_fn`` returns shapes other than
            the solution's (raised by the backward).

    References:
        Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
    """
    argnums = _normalize_argnums(argnums)
    if solve is None:
        solve = linear_solve.solve_normal_cg()
    return functools.partial(
        _custom_root, optimality_fn=optimality_fn, solve=solve, argnums=argnums, has_aux=has_aux
    )


def custom_fixed_point(
    fixed_point_fn: Callable[..., Any],
    argnums: int | tuple[int, ...],
    has_aux: bool = False,
    solve: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorate a fixed-point solver: implicit gradients of :math:`x^\star = T(x^\star, \theta)`.

    The same as :func:`custom_root` with the optimality :math:`F(x, \theta) = T(x, \theta) - x`
    (JAXopt's ``custom_fixed_point``). When :math:`T` is a contraction, the adjoint system
    :math:`(I - \partial_x T)^\top u = v` can also be solved by the Neumann series
    :math:`u = \sum_k (\partial_x T^\top)^k v`: ``solve=linear_solve.solve_inv(ns=True,
    alpha=-1.0)`` (the matvec here is :math:`(\partial_x T - I)^\top`).

    Args:
        fixed_point_fn: ``T(x, *args)``, returning a tree shaped like ``x``.
        argnums: as in :func:`custom_root`.
        has_aux: as in :func:`custom_root`.
        solve: as in :func:`custom_root` (default ``solve_normal_cg()``).

    Returns:
        A decorator for ``solver_fn``.
    """

    def optimality_fn(x: Any, *args: Any, **kwargs: Any) -> Any:
        return optree.tree_map(torch.sub, fixed_point_fn(x, *args, **kwargs), x)

    optimality_fn.__name__ = f"{getattr(fixed_point_fn, '__name__', 'T')}(x) - x"
    return custom_root(optimality_fn, argnums, has_aux=has_aux, solve=solve)
