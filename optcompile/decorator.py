"""``@optcompile``: compile a functional inner step whole, or fuse the steps of an inner loop.

Two paths, chosen per call from the arguments:

**Functional step** (no :class:`~optcompile.MetaOptimizer` or ``nn.Module`` among the
arguments; TorchOpt's FuncTorch style)::

    @optcompile
    def inner_step(params, state, x, y):
        grads = torch.func.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

The whole function — model forward, loss, inner gradient, the fused update and, through
AOTAutograd, their backward — is compiled by ``torch.compile`` into one Inductor graph per
distinct input layout (shapes, dtypes, tree structure). ``torch.func.grad`` traces the inner
gradient as forward ops, so the outer ``torch.autograd.grad`` through K calls is exact
second-order MAML with no double backward; the optimizer's backward inside the graph is
optcompile's derived VJP (the safe conventions hold). A step count, new data of the same
shapes or a new value of a 0-d tensor hyper-parameter never recompile, and the first step of
an unroll (``nn.Parameter`` leaves, moments that do not require grad yet) runs the graph of
the later ones. A number as hyper-parameter is a constant of the graph: build the
transformation with a 0-d tensor to change it without recompiling. Call ``tx.init`` outside
the decorated function (it prepares the kernels that the traced step reads).

**Object-oriented loop** (a ``MetaOptimizer`` or module among the arguments)::

    @optcompile(backend="inductor")
    def inner_loop(net, optim, batches):
        for x, y in batches:
            optim.step(((net(x) - y) ** 2).mean())

``MetaOptimizer.step`` differentiates with ``torch.autograd.grad(create_graph=True)``, which
AOTAutograd cannot compile; every step runs on the chosen fused backend instead (one compiled
kernel per step for the optimizer's maths, forward and backward), the user's code eagerly.

With ``first_order=True`` the updates are constants to the outer gradient (first-order MAML):
it flows to the initial parameters along the identity path only. ``checkpoint_every`` and
``truncate`` set the defaults of :func:`optcompile.unroll` / ``meta_unroll`` calls inside the
function (memory-bounded unrolls); such a function runs its loop eagerly, steps on ``backend``.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import time
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from optcompile.errors import LoweringError
from optcompile.lowering.backends import check_backend_name
from optcompile.lowering.backends.inductor import (
    check_inductor_options,
    compile_graph,
    describe_error,
    disabled_reason,
)
from optcompile.lowering.transforms import activation_memory_budget
from optcompile.settings import Settings, activated, current_backend, first_order_active
from optcompile.unrolling import check_options, unroll_options

__all__ = ["optcompile", "current_backend", "first_order_active"]  # the last two: settings.py

F = TypeVar("F", bound=Callable[..., Any])


def optcompile(
    fn: F | None = None,
    *,
    backend: str = "inductor",
    first_order: bool = False,
    checkpoint_every: int | str | None = None,
    truncate: int | None = None,
    memory_budget: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """Compile a functional inner step whole, or run an inner loop's steps fused.

    Args:
        fn: the function (usable as ``@optcompile`` or ``@optcompile(...)``).
        backend: ``"inductor"`` (default) or ``"auto"``: compile (a functional step whole; the
            optimizer steps of an object-oriented loop); ``"eager"`` or ``"native"``: no
            compile of the user's code, steps on that backend.
        first_order: do not differentiate through the updates (first-order MAML).
        checkpoint_every: default of every :func:`optcompile.unroll` / ``meta_unroll`` call
            inside the function: keep only every k-th step's inputs and recompute the
            segments in the outer backward (an int >= 1, or ``"sqrt"``). The function then
            runs its loop eagerly, its steps on ``backend`` (not compiled whole).
        truncate: likewise, differentiate only the last ``truncate`` inner steps.
        memory_budget: a compiled functional step keeps for the outer backward at most this
            fraction (in ``(0, 1]``) of the bytes it would save by default, and recomputes the
            rest in the backward (AOTAutograd's activation memory budget). ``None``: save
            everything the backward reads (fastest). MAML at ~1M parameters, K=5: 0.5 lowers
            the peak of an outer iteration from 0.80x to 0.67-0.69x TorchOpt's for 3-7% more
            CPU time (``docs/benchmarks.md``, section 5).
        options: Inductor settings for the compiled function's graphs, forward and backward,
            as ``torch.compile(options=...)`` takes them, over optcompile's defaults: on the
            CPU, ``cpp_wrapper`` (each graph runs from generated C++ rather than generated
            Python: about as fast to run, faster to compile, ``docs/benchmarks.md``, section
            2), which ``{"cpp_wrapper": False}`` turns off.
            Only with ``backend`` ``"inductor"`` or ``"auto"`` and no
            ``checkpoint_every``/``truncate``; an object-oriented loop (a module or
            meta-optimizer argument) runs per-step kernels, which ignore them.

    Raises:
        ValueError: an unknown backend name, ``memory_budget`` outside ``(0, 1]``, an
            ``options`` name that is not an Inductor setting, or ``options`` where nothing is
            compiled whole.
        TypeError: ``first_order`` is not a bool, ``memory_budget`` is not a number,
            ``options`` is not a mapping of names to values of the settings' types, or ``fn``
            is a generator or coroutine function.
        LoweringError: (at the call) the functional step cannot be traced as one graph; the
            message says why and what to change.
    """
    check_backend_name(backend)
    if not isinstance(first_order, bool):
        raise TypeError(f"first_order={first_order!r} must be True or False")
    check_options(checkpoint_every, truncate)
    _check_budget(memory_budget)
    inductor_options = {} if options is None else check_inductor_options(options)
    bounded = checkpoint_every is not None or truncate is not None
    if inductor_options and (bounded or backend not in ("inductor", "auto")):
        why = (
            "checkpoint_every/truncate run its loop eagerly"
            if bounded
            else f"backend={backend!r} compiles nothing"
        )
        raise ValueError(
            f"options={options!r} apply to a function compiled whole by Inductor, but {why}"
        )

    def decorate(function: F) -> F:
        if inspect.isgeneratorfunction(function) or inspect.iscoroutinefunction(function):
            # Their bodies run after the call returns, outside the settings' scope.
            raise TypeError(
                f"@optcompile cannot decorate the generator or coroutine function "
                f"{function.__qualname__}: its body runs after the call returns, outside the "
                f"decorator's settings; decorate a plain function that runs the inner loop"
            )
        settings = Settings(backend, first_order)
        whole = _WholeStep(function, backend, memory_budget, inductor_options)
        first_call = [True]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not bounded and not _object_oriented(args, kwargs):
                return whole(settings, *args, **kwargs)
            with activated(settings), unroll_options(checkpoint_every, truncate):
                if not first_call[0]:
                    return function(*args, **kwargs)
                first_call[0] = False
                return _first_call(function, args, kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _check_budget(memory_budget: Any) -> None:
    if memory_budget is None:
        return
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int | float):
        raise TypeError(f"memory_budget={memory_budget!r} must be a number in (0, 1] or None")
    if not 0 < memory_budget <= 1:
        raise ValueError(f"memory_budget={memory_budget!r} must be in (0, 1]")


def _object_oriented(args: tuple, kwargs: dict) -> bool:
    """Whether the call passes a module or a meta-optimizer (then steps use autograd.grad)."""
    from optcompile.optim.meta import MetaOptimizer

    values = (*args, *kwargs.values())
    return any(isinstance(v, torch.nn.Module | MetaOptimizer) for v in values)


class _WholeStep:
    """A functional step compiled by ``torch.compile`` (Inductor, one graph, no graph breaks)."""

    def __init__(
        self,
        function: Callable[..., Any],
        backend: str,
        memory_budget: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.function = function
        self.backend = backend
        self.memory_budget = memory_budget
        self.options = options  # checked by check_inductor_options; None: Inductor's defaults
        self._compiled: Callable[..., Any] | None = None
        self.calls = 0

    def _build(self) -> Callable[..., Any]:
        if self.backend not in ("inductor", "auto"):
            return self.function
        reason = disabled_reason()
        if reason is not None:
            self._warn_eager(reason, stacklevel=6)  # the user's call of the decorated function
            return self.function
        from optcompile.lowering import cache

        cache.configure()
        # Dynamo keeps compiled graphs per code object, and counts recompiles against a limit
        # per code object: a function decorated again (a closure over another optimizer, say)
        # gets its own copy of the code, so it never shares, nor evicts, another's graphs.
        own = types.FunctionType(
            self.function.__code__.replace(),
            self.function.__globals__,
            self.function.__name__,
            self.function.__defaults__,
            self.function.__closure__,
        )
        own.__kwdefaults__ = self.function.__kwdefaults__
        # No trial compile first: a compiler that fails (none installed, no Triton for the
        # device) fails this compile, and __call__ then runs the function eagerly.
        options = self.options

        def compile_with_options(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
            return compile_graph(gm, example_inputs, options=options)

        return torch.compile(own, backend=compile_with_options, fullgraph=True)

    def _warn_eager(self, reason: str, stacklevel: int) -> None:
        warnings.warn(
            f"optcompile: @optcompile cannot compile {self.function.__qualname__} with "
            f"Inductor ({reason}); running it eagerly (same results)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    def __call__(self, settings: Settings, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            self._compiled = self._build()
        self.calls += 1
        if self._compiled is not self.function:
            try:
                with activated(settings):
                    return self._run_compiled(args, kwargs)
            except torch._dynamo.exc.BackendCompilerFailed as err:
                self._warn_eager(describe_error(err.inner_exception), stacklevel=5)
                self._compiled = self.function
        # Not compiled: the steps run on their backend.
        backend = "eager" if settings.backend in ("inductor", "auto") else settings.backend
        with activated(Settings(backend, settings.first_order)):
            return self.function(*args, **kwargs)

    def _run_compiled(self, args: tuple, kwargs: dict) -> Any:
        assert self._compiled is not None
        args, kwargs = _uniform_state(args, kwargs)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # Dynamo's notes on the code it traces are not the user's business, nor is a
                # deprecation that Dynamo triggers itself when it traces an autograd.Function.
                warnings.simplefilter("ignore", UserWarning)
                warnings.filterwarnings(
                    "ignore", message=".*should not be instantiated", category=DeprecationWarning
                )
                if self.memory_budget is None:
                    result = self._compiled(*args, **kwargs)
                else:  # read when a graph compiles: on the first call, or a new layout
                    with activation_memory_budget(self.memory_budget):
                        result = self._compiled(*args, **kwargs)
        except torch._dynamo.exc.Unsupported as err:
            raise LoweringError(_explain_unsupported(self.function, err)) from None
        seconds = time.perf_counter() - start
        if self.calls <= 2 and seconds > 2.0:
            print(
                f"optcompile: compiled {self.function.__qualname__} (model, inner gradient, "
                f"update and their backward) in {seconds:.1f} s; later calls reuse it",
                file=sys.stderr,
            )
        return result


def _uniform_state(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments as every step of an unroll sees them, so that all its steps are one graph.

    Dynamo guards on each tensor's type and ``requires_grad``. The first step of an unroll
    gets ``nn.Parameter`` leaves and moments from ``tx.init`` that do not require grad; later
    steps get plain tensors and (in a differentiable unroll) moments that do. Left alone, the
    first step is a graph of its own, compiled, and loaded in every new process, twice over.
    So every ``nn.Parameter`` is passed as a plain-tensor alias (``as_subclass``: the same
    storage, gradients flow back to it), and in a differentiable call (grad mode on, some
    argument requires grad) each float buffer of an optcompile rule state that does not
    require grad is passed as a new leaf that does (a detached alias, no copy). Results are
    unchanged; the outer gradient reaches nothing through those leaves, and their cotangents,
    computed and dropped, cost one step's elementwise work in the first step's backward.
    """
    import optree

    leaves = optree.tree_leaves((args, kwargs))
    differentiable = torch.is_grad_enabled() and any(
        isinstance(leaf, torch.Tensor) and leaf.requires_grad for leaf in leaves
    )

    def uniform(node: Any) -> Any:
        if type(node) is torch.nn.Parameter:
            return node.as_subclass(torch.Tensor)
        if differentiable and _is_rule_state(node):
            return optree.tree_map(_requiring_grad, node)
        return node

    return optree.tree_map(uniform, (args, kwargs), is_leaf=_is_rule_state)


def _is_rule_state(node: Any) -> bool:
    """Whether ``node`` is the state NamedTuple of an optcompile rule (``ScaleByAdamState``)."""
    # optcompile.rule._state_type makes these classes and sets their module to its own.
    return isinstance(node, tuple) and type(node).__module__ == "optcompile.rule"


def _requiring_grad(leaf: Any) -> Any:
    if (
        isinstance(leaf, torch.Tensor)
        and not leaf.requires_grad
        and (leaf.is_floating_point() or leaf.is_complex())
    ):
        return leaf.detach().requires_grad_()
    return leaf


def _explain_unsupported(function: Callable[..., Any], err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    where = next((line.strip() for line in lines if line.strip().startswith("File ")), "")
    # optcompile's own refusal, raised while Dynamo traced (it reports it as an "observed
    # exception" and keeps the text only in its debug context): say that, not the generic.
    raised = re.search(r"raised exception LoweringError\((['\"])(.*)\1\)", str(err))
    if raised:
        return f"@optcompile cannot compile {function.__qualname__}: {raised.group(2)}"
    return (
        f"@optcompile cannot compile {function.__qualname__} as one graph: {lines[0]}"
        f"{' (' + where + ')' if where else ''}. A compiled step must be traceable: no Python "
        f"branches on tensor values (use torch.where), no .item()/print of tensors, tensors "
        f"or pytrees of tensors as arguments. Make that part traceable, move it out of the "
        f"decorated function, or decorate with @optcompile(backend='eager')."
    )


def _first_call(function: Callable, args: tuple, kwargs: dict) -> Any:
    from optcompile.lowering.stats import stats

    before = _graphs(stats())
    start = time.perf_counter()
    result = function(*args, **kwargs)
    compiled = _graphs(stats()) - before
    if compiled:
        print(
            f"optcompile: {function.__qualname__} compiled {compiled} kernel graph(s) on its "
            f"first call ({time.perf_counter() - start:.1f} s including the run); later calls "
            f"reuse them",
            file=sys.stderr,
        )
    return result


def _graphs(report: dict) -> int:
    return sum(entry.get("graphs", 0) for entry in report.values() if isinstance(entry, dict))
