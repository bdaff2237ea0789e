"""Inductor's CPU vector-ISA check, run once per machine instead of once per process.

Before its first C++ compile in a process, Inductor asks which SIMD instruction sets (AVX2,
AVX-512, AMX, ...) the CPU advertises and, for each, builds a test library and loads it in a
child Python (``torch._inductor.cpu_vec_isa.VecISA.check_build``). On this 2-core host that is
about 1 s in every new process, a sixth of a warm start of the whole-step MAML, and the answer
never changes while the machine, the compiler and torch stay the same.

Inductor has a switch for it, ``config.cpp.vec_isa_ok`` (env ``TORCHINDUCTOR_VEC_ISA_OK``):
``True`` trusts every instruction set the CPU advertises without the test builds. :func:`settle`
runs Inductor's own check the first time, records the verdict in the cache directory under a
key of what the verdict depends on (torch version, CPU flags, the compiler's identity), and
sets the switch only when a recorded check found that *every* advertised instruction set builds
and loads — the answer the check would give again. Otherwise the switch stays unset and Inductor
checks as before. A value the user set is never touched.

The switch is part of Inductor's cache key, so it is set the same way in the process that runs
the check: every process then computes the same keys and shares the compiled graphs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["settle", "MARKER_DIR"]

MARKER_DIR = "vec_isa"  # under the cache directory: one JSON verdict per machine key

_log = logging.getLogger(__name__)


def settle(root: Path, check: Callable[[], bool] | None = None) -> bool:
    """Skip Inductor's per-process ISA check when a recorded one says it passes; see module doc.

    Args:
        root: the cache directory (``cache.configure``'s choice) that holds the verdicts.
        check: runs the check and says whether every advertised instruction set works;
            Inductor's own by default (tests pass a stand-in).

    Returns:
        Whether ``config.cpp.vec_isa_ok`` is now ``True`` because of this call.
    """
    from torch._inductor import config

    if config.cpp.vec_isa_ok is not None or not _applies():
        return False
    try:
        key = machine_key()
    except Exception as err:  # a private helper moved or the compiler is missing: do nothing
        _log.info("optcompile: no vector-ISA memo (%s)", err)
        return False
    marker = root / MARKER_DIR / f"{key}.json"
    verdict = _read(marker)
    if verdict is None:
        verdict = (check or every_advertised_isa_works)()
        _write(marker, verdict)
    if verdict:
        config.cpp.vec_isa_ok = True
    return verdict


def _applies() -> bool:
    """Linux on x86-64, where Inductor's check builds one test library per advertised ISA."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def machine_key() -> str:
    """A hash of what the check's verdict depends on: torch, the CPU's flags, the compiler."""
    import torch
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.cpu_vec_isa import x86_isa_checker

    name = get_cpp_compiler()
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"C++ compiler {name!r} is not on PATH")
    compiler = Path(found).resolve()
    stat = compiler.stat()
    parts = [
        torch.__version__,
        sys.executable,
        " ".join(sorted(x86_isa_checker())),
        f"{compiler} {stat.st_size} {stat.st_mtime_ns}",
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def every_advertised_isa_works() -> bool:
    """Inductor's check: does every instruction set the CPU advertises build and load?"""
    from torch._inductor import cpu_vec_isa

    flags = set(cpu_vec_isa.x86_isa_checker())
    advertised = [
        isa
        for isa in cpu_vec_isa.supported_vec_isa_list
        if all(flag in flags for flag in str(isa).split())
    ]
    return bool(advertised) and all(bool(isa) for isa in advertised)


def _read(marker: Path) -> bool | None:
    try:
        value = json.loads(marker.read_text())["every_advertised_isa_works"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, bool) else None


def _write(marker: Path, verdict: bool) -> None:
    """Write the verdict atomically (another process may read it at the same moment)."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        partial = marker.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"every_advertised_isa_works": verdict}))
        partial.replace(marker)
    except OSError as err:  # a read-only cache: the check simply runs again next time
        _log.info("optcompile: cannot record the vector-ISA check in %s (%s)", marker, err)
