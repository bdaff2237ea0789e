"""``accelerated_op_available``: can the native (C++/CUDA) Adam run on these devices?"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from optcompile.accelerated_op import adam_op as adam_op
from optcompile.accelerated_op.adam_op import AdamOp

__all__ = ["AdamOp", "accelerated_op_available", "is_available"]

DeviceLike = torch.device | str | int


def _as_device(device: DeviceLike) -> torch.device | None:
    try:
        if isinstance(device, int):
            return torch.device("cuda", device)
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None


def accelerated_op_available(
    devices: DeviceLike | Iterable[DeviceLike] | None = None,
) -> bool:
    """True if the native Adam kernel builds, loads and runs on every device given.

    Never raises: an unknown device, CUDA without a GPU, or a failed build all give False.

    Args:
        devices: a ``torch.device``, a string such as ``"cuda:0"``, an int (a CUDA index) or an
            iterable of those; None checks the CPU, and CUDA when it is available.
    """
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif isinstance(devices, torch.device | str | int):
        devices = [devices]
    try:
        from optcompile.lowering.backends import native_ops as native
    except Exception:  # noqa: BLE001 - a broken build must read as "not available"
        return False
    for device in devices:
        resolved = _as_device(device)
        if resolved is None:
            return False
        try:
            if not native.is_available(resolved):
                return False
        except Exception:  # noqa: BLE001
            return False
    return True


is_available = accelerated_op_available
