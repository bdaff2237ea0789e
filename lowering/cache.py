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
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "configure", "inductor_options", "ENV_VAR"]

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
        return _configured


def inductor_options() -> dict[str, Any]:
    """Inductor config patches for optcompile's compiles: the FX graph cache on."""
    return {"fx_graph_cache": True}
