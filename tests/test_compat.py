"""TorchOpt's module layout: code that reaches into torchopt's submodules runs unchanged."""

from __future__ import annotations

import pytest
import torch

import optcompile as torchopt

SUBMODULES = [
    "accelerated_op", "alias", "base", "clip", "combine", "hook", "optim", "pytree", "schedule",
    "typing", "visual", "transform", "update", "utils",
]  # fmt: skip


@pytest.mark.parametrize("name", SUBMODULES)
def test_torchopt_submodules_exist(name):
    assert getattr(torchopt, name).__name__ == f"optcompile.{name}"


def test_torchopt_paths_of_common_names():
    assert torchopt.utils.extract_state_dict is torchopt.extract_state_dict
    assert torchopt.accelerated_op.is_available is torchopt.accelerated_op_available
    assert torchopt.combine.chain is torchopt.chain
    assert torchopt.alias.adam is torchopt.adam
    assert torchopt.update.apply_updates is torchopt.apply_updates


def test_pytree_arithmetic_matches_leafwise_torch():
    x = {"a": torch.tensor([1.0, 2.0]), "b": (torch.tensor(3.0),)}
    y = {"a": torch.tensor([0.5, -1.0]), "b": (torch.tensor(2.0),)}
    pt = torchopt.pytree
    torch.testing.assert_close(pt.tree_add(x, y)["a"], torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(pt.tree_sub_scalar_mul(x, y, 2.0)["b"][0], torch.tensor(-1.0))
    torch.testing.assert_close(pt.tree_mul(x, y)["a"], torch.tensor([0.5, -2.0]))
    torch.testing.assert_close(pt.tree_truediv(x, y)["b"][0], torch.tensor(1.5))
    torch.testing.assert_close(pt.tree_neg(x)["a"], torch.tensor([-1.0, -2.0]))
    assert pt.tree_vdot_real(x, y) == pytest.approx(0.5 - 2.0 + 6.0)
    leaves, spec = pt.tree_flatten_as_tuple(x)
    assert isinstance(leaves, tuple) and len(leaves) == spec.num_leaves == 2
