"""Every TorchOpt 0.7.3 name at TorchOpt's path, with TorchOpt's signature (issue 16).

With torchopt installed, its modules are walked and compared; without it, a hard-coded list of
the names that issue 16 found missing is checked. Modules that share their name with the
function they define (``torchopt.transform.scale_by_adam``, ``torchopt.schedule.polynomial``,
...) are compared through the function, in their package.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

import pytest
import torch

import optcompile

# Other issues add these subsystems; their names are checked there.
OUT_OF_SCOPE = ("diff", "nn", "linear_solve", "linalg", "distributed", "_C", "_src")
# TorchOpt's schedule modules share their names with the functions they define; optcompile's
# schedules live in one module (docs/guide.md, "Coming from TorchOpt").
PER_ALGORITHM = ("schedule.exponential_decay", "schedule.polynomial")

ISSUE_16_NAMES = {
    "": ["clip_grad_norm", "nan_to_num", "register_hook", "__version__"],
    "optim.meta": [
        "MetaOptimizer", "MetaSGD", "MetaAdam", "MetaAdamW", "MetaAdamax", "MetaAdaMax",
        "MetaAdagrad", "MetaAdaGrad", "MetaAdadelta", "MetaAdaDelta", "MetaRAdam",
        "MetaRMSprop", "MetaRMSProp",
    ],
    "base": ["ChainedGradientTransformation", "EmptyState", "UninitializedState", "identity"],
    "combine": ["chain", "chain_flat"],
    "accelerated_op": ["AdamOp", "is_available", "accelerated_op_available"],
    "accelerated_op.adam_op": ["AdamOp"],
    "version": ["__version__"],
    "alias.utils": [
        "_set_use_chain_flat", "_get_use_chain_flat", "flip_sign_and_add_weight_decay",
        "scale_by_neg_lr",
    ],
    "transform.utils": ["tree_map_flat", "tree_map_flat_", "inc_count", "update_moment"],
    "typing": [
        "Distribution", "Future", "LinearSolver", "ListOfOptionalTensors",
        "ModuleTensorContainers", "OptionalTensorOrOptionalTensors", "OptionalTensorTree",
        "PyTree", "Samplable", "SampleFunc", "SequenceOfOptionalTensors", "Size",
        "TensorContainer", "TupleOfOptionalTensors",
    ],
    "pytree": ["tree_flatten_as_tuple", "tree_sub", "tree_scalar_mul", "tree_truediv", "tree_wait"],
    "optim.meta.base": ["MetaOptimizer"],
    "optim.meta.adam": ["MetaAdam"],
    "optim.func.base": ["FuncOptimizer"],
    "optim.adam": ["Adam"],
}  # fmt: skip

# What TorchOpt's test_alias / test_clip / test_combine / test_schedule import.
TORCHOPT_TEST_IMPORTS = [
    ("alias.utils", "_set_use_chain_flat"),
    ("alias.utils", "_get_use_chain_flat"),
    ("", "chain"),
    ("combine", "chain_flat"),
    ("", "clip_grad_norm"),
    ("schedule", "linear_schedule"),
    ("schedule", "exponential_decay"),
    ("schedule", "polynomial_schedule"),
    ("typing", "TensorTree"),
    ("base", "ChainedGradientTransformation"),
    ("", "MetaAdam"),
    ("", "FuncOptimizer"),
]


def _ours(path: str):
    return importlib.import_module("optcompile" + (f".{path}" if path else ""))


@pytest.mark.parametrize("path", sorted(ISSUE_16_NAMES))
def test_issue_16_names_exist(path):
    module = _ours(path)
    missing = [n for n in ISSUE_16_NAMES[path] if not hasattr(module, n)]
    assert not missing, f"optcompile.{path} lacks {missing}"


@pytest.mark.parametrize(("path", "name"), TORCHOPT_TEST_IMPORTS)
def test_names_torchopt_tests_import(path, name):
    assert hasattr(_ours(path), name)


def test_one_object_per_name():
    assert optcompile.optim.meta.MetaAdam is optcompile.MetaAdam is optcompile.optim.MetaAdam
    assert optcompile.base.ChainedGradientTransformation is optcompile.ChainedGradientTransformation
    assert optcompile.chain.flat is optcompile.combine.chain_flat
    assert optcompile.clip_grad_norm is optcompile.clip.clip_grad_norm
    assert optcompile.nan_to_num is optcompile.transform.nan_to_num
    assert optcompile.register_hook is optcompile.hook.register_hook
    assert optcompile.accelerated_op.AdamOp is optcompile.accelerated_op.adam_op.AdamOp
    assert optcompile.__version__ == optcompile.version.__version__
    assert optcompile.alias.adam is optcompile.adam  # alias as a package gives the same objects


def _torchopt_modules():
    torchopt = pytest.importorskip("torchopt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in pkgutil.walk_packages(torchopt.__path__, "torchopt."):
            rel = info.name[len("torchopt.") :]
            if any(part in OUT_OF_SCOPE for part in rel.split(".")) or rel in PER_ALGORITHM:
                continue
            yield rel, importlib.import_module(info.name)
        yield "", torchopt


def _public(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [  # no __all__: what the module defines itself
        n
        for n, v in vars(module).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
    ]


def _comparable(module_path: str, rel: str) -> bool:
    # A TorchOpt module named like the function it defines is shadowed by that function
    # (torchopt.transform.scale_by_adam); compare the function, done in its package.
    parent, _, last = rel.rpartition(".")
    return not (parent in ("transform", "alias") and last != "utils")


def test_whole_torchopt_namespace_is_importable_from_optcompile():
    missing = []
    for rel, module in _torchopt_modules():
        if not _comparable(module.__name__, rel):
            continue
        try:
            ours = _ours(rel)
        except ImportError as err:
            missing.append(f"optcompile.{rel} ({err})")
            continue
        missing += [f"optcompile.{rel}.{n}" for n in _public(module) if not hasattr(ours, n)]
    assert not missing, "\n".join(missing)


_EXTENSIONS = ("backend", "amsgrad")


def _parameters(fn):
    """(name, kind, default) of each parameter; keyword-only ones as a set; our extensions dropped.

    The extensions are keyword-only with defaults, so TorchOpt code never sees them: ``backend``
    and torch.optim's ``amsgrad`` flag on Adam and AdamW.
    """
    params = [p for p in inspect.signature(fn).parameters.values() if p.name not in _EXTENSIONS]
    positional = [(p.name, p.kind, repr(p.default)) for p in params if p.kind != p.KEYWORD_ONLY]
    keyword = {(p.name, repr(p.default)) for p in params if p.kind == p.KEYWORD_ONLY}
    return positional, keyword


def test_signatures_match_torchopt():
    differences, compared = [], 0
    for rel, module in _torchopt_modules():
        if not _comparable(module.__name__, rel):
            continue
        ours = _ours(rel)
        for name in _public(module):
            theirs_obj, ours_obj = getattr(module, name, None), getattr(ours, name, None)
            if not (inspect.isfunction(theirs_obj) or inspect.isclass(theirs_obj)):
                continue
            if inspect.isclass(theirs_obj) and (
                issubclass(theirs_obj, tuple) or theirs_obj.__init__ is object.__init__
            ):
                continue  # NamedTuple states and protocols: fields, not call signatures
            try:
                expected, actual = _parameters(theirs_obj), _parameters(ours_obj)
            except (TypeError, ValueError):
                continue  # no introspectable signature on one side (a builtin)
            compared += 1
            if expected != actual:
                differences.append(f"{rel}.{name}: torchopt {expected} != optcompile {actual}")
    assert not differences, "\n".join(differences)
    assert compared > 80  # the walk reached the functions and classes


def test_scale_by_transforms_take_positional_hyper_parameters():
    params = [torch.ones(3)]
    grads = [torch.full((3,), 0.5)]
    T = optcompile.transform
    for tx in (
        T.scale_by_adam(0.5, 0.9, 1e-8, 0.0, False),
        T.scale_by_adamax(0.5, 0.9, 1e-6, False),
        T.scale_by_radam(0.5, 0.9, 1e-6, False),
        T.scale_by_adadelta(0.5, 1e-6, False),
        T.scale_by_rss(0.1, 1e-10),
        T.scale_by_rms(0.5, 1e-8, 0.0),
        T.scale_by_stddev(0.5, 1e-8, 0.0),
    ):
        updates, _ = tx.update(grads, tx.init(params), params=params, inplace=False)
        assert torch.isfinite(updates[0]).all()


def test_masked_without_mask_selects_every_leaf():
    params = [torch.ones(2), torch.ones(3)]
    tx = optcompile.transform.masked(optcompile.transform.scale(2.0))
    updates, state = tx.update([torch.ones(2), torch.ones(3)], tx.init(params), params=params)
    assert [u.tolist() for u in updates] == [[2.0, 2.0], [2.0, 2.0, 2.0]]
    assert type(state).__name__ == "MaskedState"


def test_pytree_helpers_take_torchopt_keywords():
    pt = optcompile.pytree
    x, y = {"a": torch.tensor(3.0)}, {"a": torch.tensor(2.0)}
    assert pt.tree_sub(minuend_tree=x, subtrahend_tree=y)["a"] == 1
    assert pt.tree_truediv(dividend_tree=x, divisor_tree=y)["a"] == 1.5
    assert pt.tree_scalar_mul(scalar=2, multiplicand_tree=x)["a"] == 6
    leaves, _ = pt.tree_flatten_as_tuple((1, None), none_is_leaf=True)
    assert leaves == (1, None)
    futures = [torch.futures.Future(), torch.futures.Future()]
    for k, fut in enumerate(futures):
        fut.set_result(k)
    assert pt.tree_wait(futures) == [0, 1]


def test_chain_flat_runs_the_chain_on_the_leaf_list():
    seen = []

    def init(params):
        seen.append(type(params))
        return optcompile.EmptyState()

    def update(updates, state, *, params=None, inplace=True):
        seen.append(type(updates))
        return updates, state

    tx = optcompile.combine.chain_flat(optcompile.GradientTransformation(init, update))
    params = {"w": torch.ones(2), "b": torch.ones(1)}
    updates, _ = tx.update(params, tx.init(params))
    assert seen == [list, list] and set(updates) == {"w", "b"}
    assert optcompile.chain.flat() is optcompile.base.identity()


def test_chain_flat_switch_gives_params_shaped_states():
    from optcompile.alias.utils import _get_use_chain_flat, _set_use_chain_flat

    params = (torch.ones(2), torch.ones(3))
    grads = (torch.full((2,), 0.1), torch.full((3,), 0.2))
    flat = optcompile.adam(0.1)
    _set_use_chain_flat(False)
    try:
        shaped = optcompile.adam(0.1)
    finally:
        _set_use_chain_flat(True)
    assert _get_use_chain_flat()
    flat_state, shaped_state = flat.init(params), shaped.init(params)
    assert isinstance(flat_state[0].mu, list) and isinstance(shaped_state[0].mu, tuple)
    for _ in range(2):
        u_flat, flat_state = flat.update(grads, flat_state, params=params, inplace=False)
        u_shaped, shaped_state = shaped.update(grads, shaped_state, params=params, inplace=False)
    assert isinstance(shaped_state[0].mu, tuple)
    for a, b in zip(u_flat, u_shaped, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_adam_op_equals_scale_by_adam():
    torch.manual_seed(0)
    mu, nu, g = torch.randn(4), torch.rand(4), torch.randn(4)
    tx = optcompile.transform.scale_by_adam(0.9, 0.99, 1e-8, 1e-3)
    state = tx.init([mu])._replace(mu=[mu.clone()], nu=[nu.clone()])
    state = state._replace(count=[torch.tensor(2)])
    (expected,), new = tx.update([g.clone()], state, inplace=False)
    op = optcompile.accelerated_op.AdamOp(0.9, 0.99, 1e-8, eps_root=1e-3, inplace=False)
    new_mu, new_nu, update = op(mu, nu, g, 3)  # TorchOpt counts the step being taken
    for a, b in ((new_mu, new.mu[0]), (new_nu, new.nu[0]), (update, expected)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    mu_in, nu_in, g_in = mu.clone(), nu.clone(), g.clone()
    out = optcompile.accelerated_op.AdamOp(0.9, 0.99, 1e-8, eps_root=1e-3)(mu_in, nu_in, g_in, 3)
    assert out[0] is mu_in and out[2] is g_in
    torch.testing.assert_close(g_in, expected, rtol=0, atol=0)


def test_adam_op_equals_torchopt():
    torchopt = pytest.importorskip("torchopt")
    torch.manual_seed(0)
    mu, nu, g = (
        torch.randn(5, dtype=torch.float64),
        torch.rand(5, dtype=torch.float64),
        torch.randn(5, dtype=torch.float64),
    )
    for inplace in (False, True):
        theirs = torchopt.accelerated_op.AdamOp(0.9, 0.99, 1e-8, eps_root=1e-3, inplace=inplace)
        ours = optcompile.accelerated_op.AdamOp(0.9, 0.99, 1e-8, eps_root=1e-3, inplace=inplace)
        a = theirs(mu.clone(), nu.clone(), g.clone(), 3)
        b = ours(mu.clone(), nu.clone(), g.clone(), 3)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_transform_utils_equal_torchopt():
    torchopt = pytest.importorskip("torchopt")
    ours, theirs = optcompile.transform.utils, torchopt.transform.utils
    g = [torch.randn(3), None, torch.randn(2)]
    m = [torch.randn(3), torch.randn(4), torch.randn(2)]
    for order in (1, 2):
        for decay in (0.9, 1.0):
            for inplace in (False, True):
                expected = theirs.update_moment(
                    g, [t.clone() for t in m], decay, order=order, inplace=inplace
                )
                got = ours.update_moment(
                    g, [t.clone() for t in m], decay, order=order, inplace=inplace
                )
                for a, b in zip(expected, got, strict=True):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
    count = [torch.tensor(1), torch.tensor(torch.iinfo(torch.int64).max), torch.tensor(7)]
    assert ours.inc_count(g, count) == theirs.inc_count(g, count)
    assert ours.tree_map_flat(lambda x: 2 * x, (1, None, 3)) == (2, None, 6)
