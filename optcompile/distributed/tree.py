"""Pytrees of futures and remote references (TorchOpt's ``torchopt.pytree`` RPC helpers)."""

from __future__ import annotations

from typing import Any

import optree
import torch
import torch.distributed.rpc as rpc

__all__ = ["tree_wait", "tree_as_rref", "tree_to_here"]

_UNSET = rpc.api.UNSET_RPC_TIMEOUT if rpc.is_available() else -1.0


def tree_wait(future_tree: Any) -> Any:
    """Wait for every ``torch.futures.Future`` leaf; the same tree holding their values."""
    leaves, spec = optree.tree_flatten(future_tree)
    values = torch.futures.wait_all(list(leaves))
    return optree.tree_unflatten(spec, values)


def tree_as_rref(tree: Any) -> Any:
    """Wrap every leaf in a local ``rpc.RRef`` (needs RPC to be initialised)."""
    return optree.tree_map(rpc.RRef, tree)


def tree_to_here(rref_tree: Any, timeout: float = _UNSET) -> Any:
    """Fetch every ``rpc.RRef`` leaf's value to this worker; the same tree holding the values."""
    rref_type = getattr(rpc, "RRef", ())  # absent from builds without RPC: nothing matches
    return optree.tree_map(
        lambda r: r.to_here(timeout), rref_tree, is_leaf=lambda x: isinstance(x, rref_type)
    )
