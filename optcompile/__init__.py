"""optcompile: differentiable optimizers whose update rules are declared once, symbolically.

Drop-in for TorchOpt (``import optcompile as torchopt``): every elementwise rule's backward is
derived symbolically with NaN-safe conventions, and forward and backward run as fused kernels.
"""

from optcompile import (
    accelerated_op,
    alias,
    base,
    clip,
    combine,
    diff,
    distributed,
    hook,
    linalg,
    linear_solve,
    nn,
    optim,
    pytree,
    schedule,
    state,
    sym,
    transform,
    typing,
    update,
    utils,
    version,
    visual,
)
from optcompile.accelerated_op import accelerated_op_available
from optcompile.base import EmptyState, GradientTransformation, UninitializedState, identity
from optcompile.clip import clip_grad_norm
from optcompile.combine import ChainedGradientTransformation, chain, explain
from optcompile.decorator import optcompile
from optcompile.errors import (
    HyperparameterError,
    InternalError,
    LoweringError,
    OptCompileError,
    RuleError,
)
from optcompile.hook import register_hook
from optcompile.lowering.backends import default_backend, set_default_backend
from optcompile.lowering.stats import reset_stats, stats
from optcompile.meta_unrolling import meta_unroll
from optcompile.optim import FuncOptimizer, MetaOptimizer, Optimizer
from optcompile.registry import publish_into
from optcompile.rule import Rule, rule
from optcompile.serialization import _register_builtin_states
from optcompile.state import (
    ModuleState,
    extract_state_dict,
    module_clone,
    module_detach_,
    recover_state_dict,
    stop_gradient,
)
from optcompile.transform import (
    adaptive_grad_clip,
    clip_by_block_rms,
    nan_to_num,
    scale_by_trust_ratio,
)
from optcompile.unrolling import unroll, unroll_options
from optcompile.update import apply_transform, apply_updates
from optcompile.version import __version__ as __version__

_register_builtin_states()


__all__ = [
    # declaring rules
    "rule", "Rule", "sym", "explain",
    # functional API
    "GradientTransformation", "ChainedGradientTransformation", "EmptyState", "UninitializedState",
    "identity", "chain", "apply_updates", "apply_transform", "clip_grad_norm", "nan_to_num",
    "register_hook", "unroll", "meta_unroll", "unroll_options", "scale_by_trust_ratio",
    "clip_by_block_rms", "adaptive_grad_clip",
    # optimizer objects (the registered optimizers' aliases and classes are appended below)
    "Optimizer", "FuncOptimizer", "MetaOptimizer",
    # state utilities
    "ModuleState", "extract_state_dict", "recover_state_dict", "stop_gradient", "module_clone",
    "module_detach_",
    # backends
    "optcompile", "accelerated_op_available", "set_default_backend", "default_backend", "stats",
    "reset_stats",
    # errors
    "OptCompileError", "RuleError", "HyperparameterError", "LoweringError", "InternalError",
    # submodules
    "accelerated_op", "alias", "base", "clip", "combine", "diff", "distributed", "hook", "linalg",
    "linear_solve", "nn", "optim", "pytree", "schedule", "state", "transform", "typing", "update",
    "utils", "version", "visual",
]  # fmt: skip

# Every registered optimizer (see optcompile.registry): its alias, torch-style and meta classes,
# published now and as each one is registered later.
publish_into(
    globals(),
    __all__,
    lambda info: {info.name: info.alias, **optim.classes.classes_of_registered(info)},
)
