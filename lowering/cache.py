"""Where compiled kernels persist between processes: Inductor's on-disk caches, in one place.

A cold Inductor compile on CPU costs about 10 s per cache directory, a warm one about 2.5 s
(see ``reference/cpu-compile-baseline.md``), so the cache must outlive ``/tmp`` and be the
same directory in every process. :func:`configure` runs once, before the first compile:

1. ``$OPTCOMPILE_CACHE_DIR`` if set;
2. else a ``$TORCHINDUCTOR_CACHE_DIR`` that the user set (one that torch itself filled in
   with its ``/tmp`` default does not count);
3. else ``$XDG_CACHE_HOME/optcompile/inductor``, i.e. ``~/.cache/optcompile/inductor``.

The choice is exported as ``TORCHINDUCTOR_CACHE_DIR``, which Inductor reads on every lookup,
so it applies to every ``torch.compile`` in the process. The FX graph cache is forced on for
optcompile's compiles (:func:`inductor_options`), and AOTAutograd's cache rides along with it.
Inductor's vector-ISA check, which would otherwise run in every process, is recorded there
too (:mod:`~optcompile.lowering.vec_isa`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from optcompile.lowering import vec_isa

__all__ = ["cache_dir", "configure", "inductor_options", "discard_corrupt", "ENV_VAR"]

ENV_VAR = "OPTCOMPILE_CACHE_DIR"
_INDUCTOR_VAR = "TORCHINDUCTOR_CACHE_DIR"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: Path | None = None


def _torch_default() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # the private helper moved; then any value counts as the user's
        return None
    return os.path.abspath(default_cache_dir())


def cache_dir() -> Path:
    """The directory compiled kernels go to, by the order in the module docstring.

    Pure: reads the environment, creates and changes nothing.
    """
    ours = os.environ.get(ENV_VAR)
    if ours:
        return Path(ours).expanduser().resolve()
    theirs = os.environ.get(_INDUCTOR_VAR)
    if theirs and os.path.abspath(theirs) != _torch_default():
        return Path(theirs).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser().resolve() / "optcompile" / "inductor"


def configure() -> Path:
    """Point Inductor at :func:`cache_dir` (once per process, before the first compile).

    A directory that cannot be created leaves Inductor's own default in place (logged).

    Returns:
        The directory Inductor will use.
    """
    global _configured
    with _lock:
        if _configured is None:
            path = cache_dir()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                _log.warning("optcompile: cannot use cache directory %s (%s)", path, err)
                path = Path(os.environ.get(_INDUCTOR_VAR) or _torch_default() or path)
            else:
                os.environ[_INDUCTOR_VAR] = str(path)
            _log.info("optcompile: Inductor cache directory %s", path)
            _configured = path
            _announce_discarded(path, discard_corrupt(path))
            vec_isa.settle(path)
        return _configured


def _announce_discarded(root: Path, removed: list[tuple[Path, str]]) -> None:
    """Say, once, which corrupt cache entries were deleted (they are rebuilt when needed)."""
    if not removed:
        return
    listed = "; ".join(f"{path.name}: {why}" for path, why in removed[:3])
    more = f" and {len(removed) - 3} more" if len(removed) > 3 else ""
    warnings.warn(
        f"optcompile: the kernel cache {root} held {len(removed)} corrupt compiled kernel(s) "
        f"({listed}{more}); deleted them, they are rebuilt when next needed",
        RuntimeWarning,
        stacklevel=4,
    )


def inductor_options() -> dict[str, Any]:
    """Inductor config patches for optcompile's own kernel graphs.

    The FX graph cache on; and no size/stride assertions on the inputs at every call (about
    70 per Adam step on a 6-tensor model): a graph is looked up by the exact shapes, strides,
    dtypes and devices of its inputs (``backends.inductor._layout``), so they always hold.
    """
    return {"fx_graph_cache": True, "size_asserts": False}


# A cache file younger than this may still be being written by another process.
IN_PROGRESS_S = 120.0


def _recently_written(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime < IN_PROGRESS_S
    except OSError:  # gone meanwhile: another process repaired or replaced it
        return True


def _library_problem(path: Path) -> str | None:
    """Why the shared library at ``path`` cannot load (empty, not ELF, truncated), or None.

    Reads the ELF header only: the section header table ends the file, so a file shorter than
    ``e_shoff + e_shnum * e_shentsize`` was cut short.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return "empty"
    if head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return "not a shared library"
    order: Any = "little" if head[5] == 1 else "big"
    wide = head[4] == 2
    if len(head) < (64 if wide else 52):
        return f"truncated ({size} bytes)"
    shoff, entsize, count = (
        (head[0x28:0x30], head[0x3A:0x3C], head[0x3C:0x3E])
        if wide
        else (head[0x20:0x24], head[0x2E:0x30], head[0x30:0x32])
    )
    end = int.from_bytes(shoff, order) + int.from_bytes(entsize, order) * int.from_bytes(
        count, order
    )
    if size < end:
        return f"truncated ({size} of {end} bytes)"
    return None


def discard_corrupt(root: Path | None = None) -> list[tuple[Path, str]]:
    """Delete the compiled kernels (``*.so``) under ``root`` that cannot load; say which and why.

    A corrupt entry (a write cut short, a full disk, a stray file) makes every later load of
    that kernel fail, in this process and in every later one; deleting it makes Inductor
    rebuild it on the next compile. A file written in the last :data:`IN_PROGRESS_S` seconds is
    left alone: it may be another process's kernel still being written (two ranks of a
    distributed run compiling into one cache), which deleting would break.

    Args:
        root: the cache directory; default the one :func:`configure` chose.

    Returns:
        ``(path, reason)`` for every file deleted.
    """
    root = cache_dir() if root is None else root
    removed = []
    now = time.time()
    for path in sorted(Path(root).rglob("*.so")):
        problem = _library_problem(path)
        if problem is None or _recently_written(path, now):
            continue
        try:
            path.unlink()
        except OSError as err:
            _log.warning("optcompile: cannot delete corrupt cache entry %s (%s)", path, err)
            continue
        removed.append((path, problem))
    return removed
