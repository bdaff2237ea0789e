"""The DDP trap, made loud: a meta-optimizer on the ``.module`` of a ``DistributedDataParallel``.

DDP synchronises gradients from hooks that its ``forward`` arms. An inner loop that runs on
``ddp.module`` bypasses that forward, so the outer backward is never all-reduced and each rank
silently keeps its own meta-gradient (measured: ranks disagree by up to 1.1 after one step).
:func:`check_not_ddp_wrapped` detects that a module is wrapped and raises, saying what to do.
"""

from __future__ import annotations

import gc
import weakref

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["check_not_ddp_wrapped"]

# Modules already found unwrapped. A scan costs tens of milliseconds and MAML loops build a
# meta-optimizer on the same module once per task, so each module is scanned once; DDP wraps a
# model once, before the training loop builds meta-optimizers on it.
_unwrapped: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _ddp_wrapping(module: nn.Module) -> bool:
    """Whether a live ``DistributedDataParallel`` holds ``module`` as its ``.module``.

    A wrapper stores its child in its ``_modules`` dict under ``"module"``, and that dict sits in
    the wrapper's instance ``__dict__`` next to DDP's ``reducer``; two referrer scans find them
    (tens of milliseconds, paid only while a process group is initialised).
    """
    for holder in gc.get_referrers(module):
        if not (isinstance(holder, dict) and holder.get("module") is module):
            continue
        for owner in gc.get_referrers(holder):
            if isinstance(owner, DistributedDataParallel) and owner.module is module:
                return True
            if (
                isinstance(owner, dict)
                and owner.get("_modules") is holder
                and isinstance(owner.get("reducer"), dist.Reducer)
            ):
                return True
    return False


def check_not_ddp_wrapped(module: nn.Module) -> None:
    """Raise if ``module`` is the ``.module`` of a ``DistributedDataParallel``.

    Free when no process group is initialised (DDP cannot exist then) or when ``module`` is the
    DDP wrapper itself (the inner loop then runs through ``ddp.forward``, which DDP syncs). A
    module found unwrapped is not scanned again, so wrap it in DDP before building a
    meta-optimizer on it (as training scripts do) for the check to see the wrapper.

    Raises:
        ValueError: ``module`` is wrapped by a DDP; the message gives the two correct set-ups.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if isinstance(module, DistributedDataParallel) or module in _unwrapped:
        return
    if not _ddp_wrapping(module):
        _unwrapped.add(module)
        return
    raise ValueError(
        f"this meta-optimizer was given the .module ({type(module).__name__}) of a "
        f"DistributedDataParallel: DDP only synchronises gradients when the inner loop runs "
        f"through ddp(...), so the outer backward would not be all-reduced and the ranks would "
        f"silently disagree. Either drop DDP and call "
        f"optcompile.distributed.sync_meta_gradients(module) once (recommended: exact and "
        f"faster), or give the meta-optimizer the DDP wrapper itself and run every inner step "
        f"and the outer loss through ddp(x)"
    )
