"""The Inductor backend: one compiled graph per optimizer step for all parameter tensors.

Mechanism: the eager backend's multi-tensor functions (:func:`~.eager.run_forward`,
:func:`~.eager.run_vjp`) are traced with ``make_fx`` on fake copies of the actual inputs and
compiled with ``torch._inductor.compile`` — no Dynamo, so no guards, no per-code-object
recompile limit and no silent fallback when it is hit. Measured on CPU (1 thread): a call
costs about 16 us of overhead against 47 us through ``torch.compile``, and compile times are
the same (see ``reference/cpu-compile-baseline.md``). Scalar-only subexpressions (bias
corrections such as ``1 - b1**count``) are made graph outputs so that Inductor computes them
once per call instead of once per vector of elements (:func:`_hoist_scalars`).

Graphs live in our own cache, per kernel, keyed by the direction (forward, or the VJP
:class:`~optcompile.lowering.kernel.Variant`), the number of leaves, each input's shape,
strides, dtype and device, and ``torch.get_num_threads()`` (Inductor's C++ specialises on
it). Scalars (hyper-parameters, schedule values, count) are 0-d tensor *inputs*, so new
values never recompile; ``requires_grad`` and grad mode are not in the key because graphs are
traced and run under ``no_grad``.

Fallbacks are loud: :meth:`InductorBackend.supports` compiles a trivial graph once per device
type and returns the reason it failed (the registry then warns and picks the next backend);
a kernel whose own compile fails runs eagerly from then on, after one ``RuntimeWarning``.
``OPTCOMPILE_DISABLE_INDUCTOR=1`` turns the backend off; :func:`simulate_failure` lets tests
exercise both paths without a broken compiler.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
import threading
import time
import typing
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from optcompile.lowering import cache, stats
from optcompile.lowering.backends.base import Backend, ForwardFn, TensorLists, VjpFn
from optcompile.lowering.backends.eager import run_forward, run_vjp
from optcompile.lowering.kernel import Kernel, Variant
from optcompile.lowering.transforms import outside_transforms

__all__ = [
    "InductorBackend",
    "availability",
    "compile_graph",
    "default_options",
    "describe_error",
    "disabled_reason",
    "simulate_failure",
    "DISABLE_ENV_VAR",
]

DISABLE_ENV_VAR = "OPTCOMPILE_DISABLE_INDUCTOR"
_T = TypeVar("_T")
_SLOW_COMPILE_S = 2.0  # longer compiles are announced on stderr, so a pause is explained

_log = logging.getLogger(__name__)
# stage ("probe" or "compile") -> message of the exception to raise there; see simulate_failure.
_faults: dict[str, str] = {}


@contextlib.contextmanager
def simulate_failure(stage: str = "probe", message: str = "simulated failure") -> Iterator[None]:
    """Make Inductor "fail" inside this block, to test the fallbacks.

    Args:
        stage: ``"probe"``: the per-device check in ``supports`` fails (it is re-run on entry
            and on exit), so selection falls back to the next backend. ``"compile"``: each
            kernel compile fails, so that kernel runs eagerly from then on.
        message: the text of the simulated exception, which ends up in the reason.
    """
    if stage not in ("probe", "compile"):
        raise ValueError(f"stage={stage!r}: expected 'probe' or 'compile'")
    _faults[stage] = message
    _Probe.forget()
    try:
        yield
    finally:
        _faults.pop(stage, None)
        _Probe.forget()


def _check_fault(stage: str) -> None:
    if stage in _faults:
        raise RuntimeError(_faults[stage])


def describe_error(err: BaseException) -> str:
    """``"TypeName: first line of the message"``: a compile failure in one line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _compile(fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> Callable[..., Any]:
    """Trace ``fn(*inputs) -> tuple of tensors`` and compile it with Inductor."""
    from torch.fx.experimental.proxy_tensor import make_fx

    cache.configure()
    import torch._inductor

    detached = [t.detach() for t in inputs]
    # Internal warnings of the compiler stack are not the user's business, and under
    # ``filterwarnings = error`` they would turn a working compile into a fallback. A compile
    # asked for inside a torch.func transform (the first step of a vmapped inner loop) traces
    # plain tensors: the transforms' interpreters are set aside while it runs.
    with (
        outside_transforms(),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        gm = make_fx(fn, tracing_mode="fake")(*detached)
        n_outputs = len(_outputs(gm))
        if n_outputs == 0:
            return lambda *args: ()  # e.g. a VJP whose requested gradients are all zero
        hoisted = _hoist_scalars(gm)
        # The fake inputs of the trace, so that the compiled function holds no real memory.
        fakes = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
        compiled: Callable[..., Any] = torch._inductor.compile(
            gm, fakes, options=cache.inductor_options()
        )
    if not hoisted:
        return compiled
    return lambda *args: compiled(*args)[:n_outputs]


def _with_cache_repair(build: Callable[[], _T]) -> _T:
    """``build()``; if it fails and the on-disk cache holds corrupt kernels, delete them, say
    so once, and build again (once).

    A truncated or empty compiled kernel in the cache fails every load (Inductor reports a
    ``CppCompileError``); without this, Inductor would be off in every later process too.
    """
    try:
        return build()
    except Exception:
        removed = cache.discard_corrupt()
        if not removed:
            raise
    cache._announce_discarded(cache.configure(), removed)
    _forget_loaded_kernels()
    return build()


def _forget_loaded_kernels() -> None:
    """Drop Inductor's in-process memo of compiled kernels, so the rebuild reads the disk."""
    try:
        from torch._inductor.utils import clear_caches
    except ImportError:  # the private helper moved; the rebuild then may fail once more
        return
    clear_caches()


def _output_node(gm: torch.fx.GraphModule) -> torch.fx.Node:
    node: torch.fx.Node = next(n for n in gm.graph.nodes if n.op == "output")
    return node


def _outputs(gm: torch.fx.GraphModule) -> tuple[Any, ...]:
    values = _output_node(gm).args[0]
    assert isinstance(values, tuple | list), values  # make_fx of a function returning a tuple
    return tuple(values)


def _hoist_scalars(gm: torch.fx.GraphModule) -> int:
    """Make each 0-d value that feeds an elementwise op an extra output; return how many.

    Inductor inlines 0-d producers into their consumers' loops, so a bias correction
    ``1 - b1**count`` would be recomputed (``std::pow``) once per vector of elements: +60% time
    for an Adam step at 1M parameters. An output is computed once, and the loop loads it.
    """

    def is_scalar(node: Any) -> bool:
        value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
        return isinstance(value, torch.Tensor) and value.dim() == 0

    output = _output_node(gm)
    existing = _outputs(gm)
    hoisted = [
        node
        for node in gm.graph.nodes
        if node.op == "call_function"
        and is_scalar(node)
        and node not in existing
        and any(user.op == "call_function" and not is_scalar(user) for user in node.users)
    ]
    if hoisted:
        output.args = ((*existing, *hoisted),)
        gm.recompile()
    return len(hoisted)


class _Probe:
    """Whether Inductor compiles and runs a trivial graph, once per device type."""

    _results: dict[str, str | None] = {}
    _lock = threading.Lock()

    @classmethod
    def forget(cls) -> None:
        with cls._lock:
            cls._results.clear()

    @classmethod
    def reason(cls, device: torch.device) -> str | None:
        with cls._lock:
            if device.type not in cls._results:
                cls._results[device.type] = cls._run(device)
            return cls._results[device.type]

    @staticmethod
    def _run(device: torch.device) -> str | None:
        start, misses = time.perf_counter(), _cache_misses()
        try:
            _check_fault("probe")
            x = torch.arange(8, dtype=torch.float32, device=device)
            compiled = _with_cache_repair(lambda: _compile(lambda a: (a * 2 + 1,), [x]))
            (y,) = compiled(x)
            if not torch.equal(y.cpu(), torch.arange(8, dtype=torch.float32) * 2 + 1):
                return f"Inductor on {device.type} computed a wrong result in a self-test"
        except Exception as err:  # a missing compiler, an unsupported device, ...
            _log.info("optcompile: Inductor does not work on %s", device.type, exc_info=True)
            return f"Inductor cannot compile for {device.type} ({describe_error(err)})"
        seconds, cold = time.perf_counter() - start, _cache_misses() > misses
        _announce(f"checked that Inductor works on {device.type}", seconds, cold)
        return None


def _cache_misses() -> int:
    """Inductor's count of FX-graph cache misses: did a compile really compile?"""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # a broken install; the compile itself will say what is wrong
        return 0
    return int(counters["inductor"]["fxgraph_cache_miss"])


def _announce(what: str, seconds: float, cold: bool) -> None:
    """Log a compile; on stderr too when it was slow and really compiled (not loaded)."""
    source = "compiled" if cold else "loaded from the on-disk cache"
    _log.info("optcompile: %s in %.1f s (%s)", what, seconds, source)
    if cold and seconds > _SLOW_COMPILE_S:
        print(
            f"optcompile: {what} in {seconds:.1f} s (cached on disk for next time)",
            file=sys.stderr,
        )


@dataclass(eq=False)
class _Graph:
    fn: Callable[..., Any]
    # VJP only: which tensor-input grads and which hyper-parameter grads the graph returns.
    tensor_mask: tuple[bool, ...] = ()
    scalar_mask: tuple[bool, ...] = ()


@dataclass(eq=False)
class _KernelGraphs:
    graphs: dict[tuple[Any, ...], _Graph] = field(default_factory=dict)
    directions: set[Any] = field(default_factory=set)  # "forward" or a Variant, once compiled
    failed: str | None = None  # why a compile failed; then the kernel runs eagerly


def _layout(flat: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in flat)


def disabled_reason() -> str | None:
    """``"disabled by OPTCOMPILE_DISABLE_INDUCTOR"`` when that variable turns Inductor off."""
    flag = os.environ.get(DISABLE_ENV_VAR, "").strip().lower()
    if flag not in ("", "0", "false", "no", "off"):
        return f"disabled by {DISABLE_ENV_VAR}"
    return None


def availability(device: torch.device) -> str | None:
    """None if Inductor compiles on ``device`` here, else the reason it does not.

    Honours ``OPTCOMPILE_DISABLE_INDUCTOR`` and :func:`simulate_failure`; the probe runs once
    per device type.
    """
    return disabled_reason() or _Probe.reason(torch.device(device))


def compile_graph(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Any],
    *,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A ``torch.compile`` backend: Inductor's ``compile_fx``, failing where
    :func:`simulate_failure` (stage ``"compile"``) says, so that callers' fallbacks are tested
    on the path a real failure takes.

    ``options`` are Inductor config settings (checked by :func:`check_inductor_options`) for
    this graph's compiles, the forward's and the backward's (which AOTAutograd compiles at the
    first backward), as ``torch.compile(options=...)`` applies them, over
    :func:`default_options`.

    AOTAutograd's cache admits the graph even though it holds ``autograd.Function`` calls
    (every differentiable fused step is one). By default AOTAutograd bypasses its cache for
    them, and each new process then re-derives the joint forward/backward graph and re-runs
    the partitioner: 1-2 s of a whole-step MAML's warm start here (``docs/benchmarks.md``,
    section 5). Admitting them is safe
    because Dynamo traces a Function's forward and backward into subgraphs of ``gm`` and the
    cache key hashes ``gm`` with its subgraphs' code: a different rule, or a changed backward,
    is a different key. An explicit ``TORCHINDUCTOR_AUTOGRAD_CACHE_ALLOW_CUSTOM_AUTOGRAD``
    in the environment overrides this (torch reads it over any setting).
    """
    _check_fault("compile")
    from torch._functorch import config as functorch_config
    from torch._inductor.compile_fx import compile_fx

    with functorch_config.patch(autograd_cache_allow_custom_autograd_functions=True):
        patches = {**default_options(example_inputs), **(options or {})}
        return compile_fx(gm, example_inputs, config_patches=patches)


def default_options(example_inputs: Sequence[Any]) -> dict[str, Any]:
    """The Inductor settings :func:`compile_graph` uses unless its ``options`` say otherwise.

    A graph whose tensors are all on the CPU gets ``cpp_wrapper``: Inductor then runs it from
    generated C++ rather than generated Python, which allocates the buffers and calls the
    kernels. For a whole MAML meta-gradient at ~100k parameters (206 kernel and matmul calls
    per iteration) it compiled in less time, cold and warm (its kernels are built as one
    library rather than one per kernel), and ran about as fast (``docs/benchmarks.md``,
    section 2, "The C++ wrapper"). GPU graphs keep Inductor's Python wrapper (not measured
    here).
    """
    on_cpu = all(t.device.type == "cpu" for t in example_inputs if isinstance(t, torch.Tensor))
    return {"cpp_wrapper": True} if on_cpu else {}


def check_inductor_options(options: Any) -> dict[str, Any]:
    """``options`` as a dict of Inductor config settings, checked as ``torch.compile`` does.

    Raises:
        TypeError: ``options`` is not a mapping from names to values, or a value's type is not
            the setting's.
        ValueError: a name is not an Inductor setting.
    """
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise TypeError(
            f"options={options!r} must be a mapping from Inductor setting names to values, "
            f"e.g. {{'cpp_wrapper': True}}"
        )
    from torch._inductor import config

    known = config.get_config_copy()
    checked = {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"options: {key!r} is not an Inductor setting{hint}")
        expected = config.get_type(name)  # type: ignore[attr-defined]
        if typing.get_origin(expected) is None and not isinstance(value, expected):
            raise TypeError(
                f"options: {key!r} must be a {expected.__name__}, got {type(value).__name__}"
            )
        checked[name] = value
    return checked


class InductorBackend(Backend):
    """Runs each kernel as one Inductor-compiled graph per call over all leaves."""

    name = "inductor"
    compiles_per_shape = True

    def __init__(self) -> None:
        self._kernels: weakref.WeakKeyDictionary[Kernel, _KernelGraphs] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.RLock()

    def supports(self, kernel: Kernel, device: torch.device) -> str | None:
        return availability(device)

    # Inside a user's torch.compile region, Dynamo traces the eager math into the user's own
    # graph, and Inductor fuses it there; a second compiler inside the first would only break
    # that graph.
    def forward(self, kernel: Kernel) -> ForwardFn:
        def run(tensor_lists: TensorLists, scalars: Sequence[torch.Tensor]) -> Any:
            if torch.compiler.is_compiling():
                return run_forward(kernel, tensor_lists, scalars)
            return self._forward(kernel, tensor_lists, scalars)

        return run

    def vjp(self, kernel: Kernel) -> VjpFn:
        def run(variant: Variant, cots: Any, tensor_lists: TensorLists, scalars: Any) -> Any:
            if torch.compiler.is_compiling():
                return run_vjp(kernel, variant, cots, tensor_lists, scalars)
            return self._vjp(kernel, variant, cots, tensor_lists, scalars)

        return run

    def clear(self, kernel: Kernel | None = None) -> None:
        """Forget the compiled graphs and any failed compile of ``kernel`` (default: of all).

        The on-disk cache is kept, so compiling again is quick.
        """
        with self._lock:
            if kernel is None:
                self._kernels = weakref.WeakKeyDictionary()
            else:
                self._kernels.pop(kernel, None)

    def _entry(self, kernel: Kernel) -> _KernelGraphs:
        entry = self._kernels.get(kernel)
        if entry is None:
            with self._lock:
                entry = self._kernels.setdefault(kernel, _KernelGraphs())
        return entry

    def _forward(
        self, kernel: Kernel, tensor_lists: TensorLists, scalars: Sequence[torch.Tensor]
    ) -> list[list[torch.Tensor]]:
        entry = self._entry(kernel)
        n_leaves = len(tensor_lists[0]) if tensor_lists else 0
        if entry.failed is not None or n_leaves == 0:
            stats.record("eager", "steps")
            return run_forward(kernel, tensor_lists, scalars)
        flat = [t for column in tensor_lists for t in column]
        flat.extend(scalars)
        key = ("forward", n_leaves, _layout(flat), torch.get_num_threads())
        graph = entry.graphs.get(key)
        if graph is None:
            n_tensor = len(tensor_lists)

            def traced(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
                lists = [list(inputs[j * n_leaves : (j + 1) * n_leaves]) for j in range(n_tensor)]
                outputs = run_forward(kernel, lists, inputs[n_tensor * n_leaves :])
                return tuple(t for column in outputs for t in column)

            built = self._build(
                kernel, entry, key, "forward", n_leaves, lambda: _Graph(_compile(traced, flat))
            )
            if isinstance(built, str):
                result = run_forward(kernel, tensor_lists, scalars)
                self._give_up(kernel, entry, built)
                stats.record("eager", "steps")
                return result
            graph = built
        stats.record(self.name, "steps")
        with torch.no_grad():
            out: Sequence[torch.Tensor] = graph.fn(*flat)
        n_out = len(kernel.ir.outputs)
        return [list(out[k * n_leaves : (k + 1) * n_leaves]) for k in range(n_out)]

    def _vjp(
        self,
        kernel: Kernel,
        variant: Variant,
        cotangent_lists: Sequence[Sequence[torch.Tensor] | None],
        tensor_lists: TensorLists,
        scalars: Sequence[torch.Tensor],
    ) -> tuple[list[Any], list[Any]]:
        entry = self._entry(kernel)
        n_leaves = len(tensor_lists[0]) if tensor_lists else 0
        if entry.failed is not None or n_leaves == 0:
            stats.record("eager", "vjp_calls")
            return run_vjp(kernel, variant, cotangent_lists, tensor_lists, scalars)
        present = tuple(c is not None for c in cotangent_lists)
        flat = [t for column in cotangent_lists if column is not None for t in column]
        flat.extend(t for column in tensor_lists for t in column)
        flat.extend(scalars)
        key = (variant, present, n_leaves, _layout(flat), torch.get_num_threads())
        graph = entry.graphs.get(key)
        if graph is None:
            built = self._build(
                kernel,
                entry,
                key,
                variant,
                n_leaves,
                lambda: _trace_vjp(kernel, variant, present, len(tensor_lists), n_leaves, flat),
            )
            if isinstance(built, str):
                grads = run_vjp(kernel, variant, cotangent_lists, tensor_lists, scalars)
                self._give_up(kernel, entry, built)
                stats.record("eager", "vjp_calls")
                return grads
            graph = built
        stats.record(self.name, "vjp_calls")
        with torch.no_grad():
            out = list(graph.fn(*flat))
        tensor_grads: list[list[torch.Tensor] | None] = []
        for has in graph.tensor_mask:
            tensor_grads.append(out[:n_leaves] if has else None)
            out = out[n_leaves:] if has else out
        scalar_grads = [out.pop(0) if has else None for has in graph.scalar_mask]
        return tensor_grads, scalar_grads

    def _build(
        self,
        kernel: Kernel,
        entry: _KernelGraphs,
        key: tuple[Any, ...],
        direction: Any,
        n_leaves: int,
        build: Callable[[], _Graph],
    ) -> _Graph | str:
        """Compile and store the graph for ``key``; if that fails, the reason why."""
        with self._lock:
            if key in entry.graphs:  # another thread compiled it meanwhile
                return entry.graphs[key]
            if entry.failed is not None:
                return entry.failed
            label = "forward" if direction == "forward" else "VJP"
            start, misses = time.perf_counter(), _cache_misses()
            try:
                _check_fault("compile")
                graph = _with_cache_repair(build)
            except Exception as err:
                _log.info("optcompile: compiling %s failed", kernel.name, exc_info=True)
                return f"compiling its {label} failed ({describe_error(err)})"
            seconds = time.perf_counter() - start
            stats.record(self.name, "graphs")
            stats.record(self.name, "compile_seconds", seconds)
            if direction in entry.directions:
                stats.record(self.name, "recompiles")
            entry.directions.add(direction)
            entry.graphs[key] = graph
            cold = _cache_misses() > misses
        _announce(f"compiled {kernel.name} {label} for {n_leaves} tensors", seconds, cold)
        return graph

    def _give_up(self, kernel: Kernel, entry: _KernelGraphs, reason: str) -> None:
        """Run ``kernel`` eagerly from now on, saying so once.

        Called only after the eager run of the same inputs succeeded: an error that eager
        raises too (wrong inputs) is the caller's, not a reason to stop compiling.
        """
        with self._lock:
            if entry.failed is not None:
                return
            entry.failed = reason
        stats.record_fallback(self.name, kernel.name, reason)
        warnings.warn(
            f"optcompile: Inductor could not compile {kernel.name}: {reason}; "
            "running it with the eager backend from now on",
            RuntimeWarning,
            stacklevel=5,
        )


def _trace_vjp(
    kernel: Kernel,
    variant: Variant,
    present: tuple[bool, ...],
    n_tensor: int,
    n_leaves: int,
    flat: Sequence[torch.Tensor],
) -> _Graph:
    masks: list[tuple[bool, ...]] = []

    def traced(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rest = list(inputs)
        cots: list[list[torch.Tensor] | None] = []
        for has in present:
            cots.append(rest[:n_leaves] if has else None)
            rest = rest[n_leaves:] if has else rest
        lists = [rest[j * n_leaves : (j + 1) * n_leaves] for j in range(n_tensor)]
        tensor_grads, scalar_grads = run_vjp(
            kernel, variant, cots, lists, rest[n_tensor * n_leaves :]
        )
        masks[:] = [
            tuple(g is not None for g in tensor_grads),
            tuple(g is not None for g in scalar_grads),
        ]
        flat_tensor = [t for grads in tensor_grads if grads is not None for t in grads]
        return (*flat_tensor, *(g for g in scalar_grads if g is not None))

    fn = _compile(traced, flat)
    return _Graph(fn, masks[0], masks[1])
