"""Native (C++/CUDA) Adam kernels, the hand-written fallback of the ``native`` backend.

The sources in ``csrc/adam/`` are compiled on first use with ``torch.utils.cpp_extension``
(torch's own compiler flags and C++ ABI, unlike TorchOpt's hard-coded old ABI) and loaded as
the operators ``torch.ops.optcompile.adam_forward`` / ``adam_backward``. One step, element-wise,
with ``t = count`` (1-based) and ``s = step_size``:

.. math::

    m' = b_1 m + (1 - b_1) g, \\qquad v' = b_2 v + (1 - b_2) g^2, \\\\
    u = s \\, \\frac{m' / (1 - b_1^t)}{\\sqrt{v' / (1 - b_2^t) + \\epsilon_{root}} + \\epsilon}.

The backward is exact except that :math:`\\frac{d}{dx}\\sqrt{x}` is taken as 0 at
:math:`x = 0` (the "safe sqrt" rule), so it stays finite where autograd of the formula gives
``inf * 0 = NaN`` (an element whose gradients were all zero so far).

These are the raw operators; :class:`~optcompile.lowering.backends.native.NativeBackend` runs
them for kernels that are Adam, and ``lowering/autograd.py`` wires their autograd like every
backend's. This module imports nothing from optcompile, so it builds on its own:
``python -m optcompile build-native`` builds the kernels ahead of time.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

import torch

__all__ = ["build", "build_directory", "is_available"]

_NAME = "optcompile_native"


def _sources() -> Path:
    """csrc/ is installed as the package optcompile.csrc (its sources are package data), so
    this finds them in a source checkout, an editable install and a wheel alike."""
    spec = importlib.util.find_spec("optcompile.csrc")
    if spec is None or spec.origin is None:
        raise RuntimeError("optcompile.csrc is missing: the package is installed incompletely")
    return Path(spec.origin).parent / "adam"


_CSRC = _sources()

_lock = threading.Lock()
_library: Path | None = None  # the loaded shared library, once loaded
_build_error: BaseException | None = None  # a failed build is not retried in this process
_smoke_tested: dict[str, bool] = {}


def _with_cuda() -> bool:
    # ROCm builds of torch report cuda as available too; the kernels are CUDA-only.
    if not (torch.cuda.is_available() and torch.version.cuda):
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def build_directory() -> Path:
    """Where the kernels are compiled and cached.

    ``$OPTCOMPILE_NATIVE_DIR`` (default ``~/.cache/optcompile/native``), then one folder per
    torch version and device kind, so that a torch upgrade never loads a stale library.

    Returns:
        The build directory (not created here).
    """
    root = os.environ.get("OPTCOMPILE_NATIVE_DIR") or Path.home() / ".cache/optcompile/native"
    kind = "cuda" if _with_cuda() else "cpu"
    return Path(root) / f"torch-{torch.__version__}-{kind}"


def _cuda_arch_flags() -> list[str]:
    # Explicit -gencode flags for the visible GPUs (plus PTX for the newest), which is what
    # cpp_extension does by default, minus its log line; TORCH_CUDA_ARCH_LIST still wins.
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    flags = [f"-gencode=arch=compute_{a}{b},code=sm_{a}{b}" for a, b in caps]
    a, b = caps[-1]
    return [*flags, f"-gencode=arch=compute_{a}{b},code=compute_{a}{b}"]


def _compile_and_load() -> Path:
    from torch.utils import cpp_extension

    sources = [_CSRC / "adam.cpp"]
    cuda = _with_cuda()
    if cuda:
        sources.append(_CSRC / "adam_cuda.cu")
    missing = [str(s) for s in [*sources, _CSRC / "adam.h"] if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"native Adam sources not found: {', '.join(missing)}")
    out = build_directory()
    out.mkdir(parents=True, exist_ok=True)
    library = out / f"{_NAME}.so"
    newest = max(s.stat().st_mtime for s in [*sources, _CSRC / "adam.h"])
    if not library.is_file() or library.stat().st_mtime < newest:
        # Ninja decides what to rebuild; this only predicts it, to explain the pause.
        what = "~10 s; longer with the CUDA kernels" if cuda else "~10 s"
        print(f"optcompile: building the native Adam kernels (once, {what})...", file=sys.stderr)
    cpp_extension.load(
        name=_NAME,
        sources=[str(s) for s in sources],
        # No -march: the cache may be shared by different CPUs, so adam.cpp clones its loops
        # per ISA instead. -fno-math-errno and -fno-trapping-math let gcc vectorise sqrt and
        # the safe-sqrt select (a division under a branch) without changing a value, and
        # -ffp-contract=off keeps FMA out, so that every ISA clone rounds alike.
        extra_cflags=[
            "-O3",
            "-fopenmp",
            "-fno-math-errno",
            "-fno-trapping-math",
            "-ffp-contract=off",
        ],
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", *_cuda_arch_flags()] if cuda else None,
        build_directory=str(out),
        with_cuda=cuda,
        # A plain shared library holding TORCH_LIBRARY registrations: no pybind11 module.
        is_python_module=False,
        verbose=False,
    )
    _register_fakes()
    return library


def _register_fakes() -> None:
    # Shapes only, so that FakeTensor / torch.compile can trace the ops. The kernels return
    # contiguous tensors of g's shape, dtype and device, and a 0-d grad_step_size like
    # step_size.
    def forward_fake(
        g: torch.Tensor,
        mu: torch.Tensor,
        nu: torch.Tensor,
        step_size: torch.Tensor,
        count: torch.Tensor,
        b1: float,
        b2: float,
        eps: float,
        eps_root: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return g.new_empty(g.shape), g.new_empty(g.shape), g.new_empty(g.shape)

    def backward_fake(
        grad_update: torch.Tensor,
        grad_new_mu: torch.Tensor | None,
        grad_new_nu: torch.Tensor | None,
        g: torch.Tensor,
        mu: torch.Tensor,
        nu: torch.Tensor,
        step_size: torch.Tensor,
        count: torch.Tensor,
        b1: float,
        b2: float,
        eps: float,
        eps_root: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = g.shape
        return g.new_empty(shape), g.new_empty(shape), g.new_empty(shape), step_size.new_empty(())

    torch.library.register_fake("optcompile::adam_forward", forward_fake)
    torch.library.register_fake("optcompile::adam_backward", backward_fake)


def _load() -> Path:
    """Build (if needed) and load the kernels once per process; raise if that fails."""
    global _library, _build_error
    with _lock:
        if _library is None and _build_error is None:
            try:
                _library = _compile_and_load()
            except Exception as err:  # compiler, ninja, linker and loader errors alike
                _build_error = err
        if _build_error is not None:
            raise RuntimeError(
                "optcompile: the native Adam kernels could not be built or loaded; use "
                "backend='inductor' or backend='eager' instead. Cause: "
                f"{type(_build_error).__name__}: {_build_error}"
            ) from _build_error
        assert _library is not None
        return _library


def build() -> Path:
    """Compile the native kernels now (ahead of time) and load them.

    Also ``python -m optcompile build-native``. Compiles for the CPU, and for
    CUDA too when ``torch.cuda.is_available()`` and a CUDA toolkit (``CUDA_HOME``) is found.

    Returns:
        The path of the shared library.

    Raises:
        RuntimeError: The build or the load failed; the message holds the compiler output.
    """
    return _load()


def is_available(device: torch.device | str | int = "cpu") -> bool:
    """Whether the native kernels run on ``device``; builds them on the first call.

    Never raises: a failed build, a device kind other than ``cpu``/``cuda``, or ``cuda``
    without a GPU or CUDA toolkit all give False.

    Args:
        device: A device, as ``torch.device`` accepts it.

    Returns:
        True when one step on a small tensor on ``device`` ran.
    """
    try:
        dev = torch.device(device)
        if dev.type == "cuda" and not _with_cuda():
            return False
        if dev.type not in ("cpu", "cuda"):
            return False
        _load()
        key = str(dev)
        if key not in _smoke_tested:
            # Running the op catches what loading cannot, e.g. a GPU the build has no code for.
            x = torch.ones(3, device=dev)
            one = torch.ones((), device=dev)
            update = torch.ops.optcompile.adam_forward(x, x, x, one, one, 0.9, 0.999, 1e-8, 0.0)
            _smoke_tested[key] = bool(torch.isfinite(update[0]).all())
        return _smoke_tested[key]
    except Exception:
        return False
