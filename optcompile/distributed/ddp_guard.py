"""The DDP trap, made loud: a meta-optimizer on the ``.module`` of a ``DistributedDataParallel``.

DDP synchronises gradients from hooks that its ``forward`` arms. An inner loop that runs on
``ddp.module`` bypasses that forward, so the outer backward is never all-reduced and each rank
silently keeps its own meta-gradient (measured: ranks disagree by up to 1.1 after one step).
:func:`check_not_ddp_wrapped` knows which modules a live DDP wraps and raises, saying what to do.

How it knows: a global module-registration hook (``torch.nn.modules.module.
register_module_module_registration_hook``) sees every ``parent.name = submodule`` assignment,
including DDP's own ``self.module = module``; the wrapped module is remembered with a weak
reference to its wrapper. That costs one ``isinstance`` per submodule registration anywhere,
and covers every DDP built after ``import optcompile``.
"""

from __future__ import annotations

import weakref

from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook
from torch.nn.parallel import DistributedDataParallel

__all__ = ["check_not_ddp_wrapped"]

_wrapper_of: weakref.WeakKeyDictionary[nn.Module, weakref.ref[DistributedDataParallel]] = (
    weakref.WeakKeyDictionary()
)


def _note_ddp_wrapper(parent: nn.Module, name: str, submodule: nn.Module | None) -> None:
    if name == "module" and submodule is not None and isinstance(parent, DistributedDataParallel):
        _wrapper_of[submodule] = weakref.ref(parent)


register_module_module_registration_hook(_note_ddp_wrapper)


def check_not_ddp_wrapped(module: nn.Module) -> None:
    """Raise if ``module`` is the ``.module`` of a live ``DistributedDataParallel``.

    ``module`` being the DDP wrapper itself is fine: the inner loop then runs through
    ``ddp.forward``, which DDP synchronises.

    Raises:
        ValueError: ``module`` is wrapped by a DDP; the message gives the two correct set-ups.
    """
    ref = _wrapper_of.get(module)
    wrapper = ref() if ref is not None else None
    if wrapper is None or wrapper.module is not module:
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
