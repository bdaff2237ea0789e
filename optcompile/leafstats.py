r"""Per-leaf statistics: a norm per parameter tensor, fed to an elementwise rule.

A rule's body is elementwise, but LAMB, LARS, Novograd, block-RMS and adaptive clipping scale
each parameter tensor by a statistic of the *whole* tensor: :math:`\lVert p \rVert_2`,
:math:`\lVert u \rVert_2`, :math:`\mathrm{mean}(u^2)`, or a norm per unit (row, column, filter).
A rule declares such inputs by name, ``@rule(stats={"update_norm": UPDATE_NORM})``, and reads
them in its body like any other per-element input.

Each statistic is computed here, before the kernel, with ordinary differentiable torch ops, one
tensor per active leaf, and enters the kernel as one more tensor input broadcast to the leaf's
shape (``stat.expand_as(leaf)``: a stride-0 view, no memory). Nothing new is needed downstream:
the kernel's derived VJP gives the statistic an elementwise cotangent, autograd's ``expand``
backward sums it over the leaf (or over each unit), and the statistic's own backward carries it
to the update and the parameter. So meta-gradients flow through the norms; the norms used here
have derivative 0 at 0 (``torch.linalg.vector_norm``'s convention) instead of NaN.

A statistic is of the update that *enters* its rule, so a rule with statistics starts a new
fused unit of a chain (as a rule fed an :class:`~optcompile.fused.UpdatesStatistic` does); the
rules after it fuse with it.

Example:
    >>> import torch, optcompile
    >>> @optcompile.rule(stats={"norm": UPDATE_NORM})
    ... def normalize(g, *, eps=0.0, norm):
    ...     return g / (norm + eps), ()
    >>> tx = normalize(backend="eager")
    >>> g = [torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])]
    >>> updates, _ = tx.update(g, tx.init(g))
    >>> [u.tolist() for u in updates]  # each tensor divided by its own norm
    [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optree
import torch

if TYPE_CHECKING:  # fused.py imports this module at run time
    from optcompile.members import Member

__all__ = [
    "LeafStatistic",
    "leaf_statistic_inputs",
    "PARAM_NORM",
    "UPDATE_NORM",
    "UPDATE_SQUARED_NORM",
    "UPDATE_MEAN_SQUARE",
    "UPDATE_UNITWISE_NORM",
    "PARAM_UNITWISE_NORM",
    "unitwise_norm",
]


@dataclass(frozen=True)
class LeafStatistic:
    """A statistic of one parameter tensor, computed before the kernel at each step.

    Attributes:
        fn: ``fn(update_leaf, param_leaf)`` -> a tensor broadcastable to the leaf's shape (a 0-d
            tensor for a whole-tensor norm, a keep-dims tensor for unit-wise norms), computed
            with differentiable torch ops; ``param_leaf`` is None unless ``reads_params``.
        description: shown by :func:`optcompile.explain` and in docs, e.g. ``"||p||_2"``.
        reads_params: whether ``fn`` needs the parameter (the transform then needs
            ``params=``).
    """

    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    description: str
    reads_params: bool = False


def _norm(x: torch.Tensor) -> torch.Tensor:
    """:math:`\\lVert x \\rVert_2` over the whole tensor; derivative 0 at x = 0."""
    return torch.linalg.vector_norm(x)


def _update_norm(u: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    return _norm(u)


def _param_norm(u: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    assert p is not None
    return _norm(p)


def _update_squared_norm(u: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    return (u * u).sum()


def _update_mean_square(u: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    return (u * u).mean()


def _unitwise_axes(ndim: int, shape: Sequence[int]) -> tuple[int, ...] | None:
    """optax's ``unitwise_norm`` axes; None: the whole tensor (scalars and vectors)."""
    if sum(1 for n in shape if n != 1) <= 1:
        return None
    if ndim in (2, 3):
        return (0,)
    if ndim in (4, 5):
        return tuple(range(ndim - 1))
    raise ValueError(
        f"adaptive_grad_clip: a leaf of shape {tuple(shape)} has no unit-wise norm (optax's "
        f"convention covers 1 to 5 dimensions)"
    )


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    r"""The L2 norm of each unit of ``x``, as optax's ``unitwise_norm`` (keep-dims shape).

    Units follow optax's (JAX, input-major) layouts: scalars and vectors (``x.squeeze()`` of at
    most 1 dimension) are one unit; 2-D and 3-D tensors are normed over axis 0; 4-D over axes
    (0, 1, 2); 5-D over (0, 1, 2, 3). For a PyTorch ``Linear.weight`` of shape (out, in) axis 0
    is the output axis, so its units are the *input* columns, not the per-output-neuron rows of
    the NFNet paper: this matches optax on the same array, which is what is tested.

    Raises:
        ValueError: ``x`` has more than 5 dimensions.
    """
    axes = _unitwise_axes(x.dim(), x.shape)
    if axes is None:
        return torch.linalg.vector_norm(x).reshape((1,) * x.dim())
    return torch.linalg.vector_norm(x, dim=axes, keepdim=True)


def _update_unitwise(u: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    return unitwise_norm(u)


def _param_unitwise(u: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
    assert p is not None
    return unitwise_norm(p)


PARAM_NORM = LeafStatistic(_param_norm, "||p||_2", reads_params=True)
UPDATE_NORM = LeafStatistic(_update_norm, "||u||_2")
UPDATE_SQUARED_NORM = LeafStatistic(_update_squared_norm, "||u||_2^2")
UPDATE_MEAN_SQUARE = LeafStatistic(_update_mean_square, "mean(u^2)")
UPDATE_UNITWISE_NORM = LeafStatistic(_update_unitwise, "unit-wise ||u||_2 (optax's units)")
PARAM_UNITWISE_NORM = LeafStatistic(
    _param_unitwise, "unit-wise ||p||_2 (optax's units)", reads_params=True
)


def leaf_statistic_inputs(
    members: Sequence[Member], updates: Sequence[torch.Tensor], params: Any, group: Sequence[int]
) -> list[list[torch.Tensor]]:
    """The kernel's statistic inputs for one group of leaves: one list per declared statistic.

    Args:
        members: the fused unit's members; only the first declares statistics (checked when
            the RuleTransformation is built), since only its incoming updates exist as tensors.
        updates: the group's incoming update tensors.
        params: the parameters' pytree (or None), indexed by the leaf positions in ``group``.
        group: the positions of ``updates``' leaves among all leaves.

    Returns:
        For each statistic of the first member, in declaration order, the list over the group
        of ``stat.expand_as(update)`` (stride-0 views; differentiable).

    Raises:
        ValueError: a statistic needs ``params=`` and none (or parameters of other shapes)
            were given.
    """
    declared = members[0].rule.stats if members else {}
    if not declared:
        return []
    needs_params = any(stat.reads_params for stat in declared.values())
    p_group = _param_group(members[0].rule.name, params, updates, group) if needs_params else None
    return [
        [
            stat.fn(u, p_group[k] if p_group is not None and stat.reads_params else None)
            .to(u.dtype)
            .expand_as(u)
            for k, u in enumerate(updates)
        ]
        for stat in declared.values()
    ]


def _param_group(
    name: str, params: Any, updates: Sequence[torch.Tensor], group: Sequence[int]
) -> list[torch.Tensor]:
    """The parameter leaves at ``group``'s positions, checked against their updates."""
    if params is None:
        raise ValueError(
            f"{name} reads the parameters: pass params= to update() "
            f"(e.g. tx.update(grads, state, params=params))"
        )
    leaves = optree.tree_leaves(params, none_is_leaf=True)
    selected = []
    for u, i in zip(updates, group, strict=True):
        p = leaves[i] if i < len(leaves) else None
        if not isinstance(p, torch.Tensor) or p.shape != u.shape:
            shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
            raise ValueError(
                f"params: leaf {i} is {shape} but its update has shape {tuple(u.shape)}; pass "
                f"the parameters the updates are for"
            )
        selected.append(p)
    return selected
