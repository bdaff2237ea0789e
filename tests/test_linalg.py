"""optcompile.linalg and optcompile.linear_solve: exact against dense solves (float64),
sync-free and vmappable, never a zero budget, loud when they do not converge."""

from __future__ import annotations

import pytest
import torch

from optcompile import linalg, linear_solve
from optcompile.linalg.utils import normalize_matvec
from optcompile.linear_solve.utils import materialize_matvec

D = torch.float64


def _spd(n: int, seed: int = 0, cond: float = 10.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    return q @ torch.diag(torch.linspace(1.0, cond, n, dtype=D)) @ q.T


def _rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _tree_matvec(A: torch.Tensor):
    """A dense 6 x 6 operator on the tree {'a': (2,), 'b': (2, 2)}, coupling both leaves."""

    def matvec(x):
        y = A @ torch.cat([x["a"], x["b"].reshape(-1)])
        return {"a": y[:2], "b": y[2:].reshape(2, 2)}

    return matvec


def test_normalize_matvec_tree_of_matrices():
    A = {"a": _spd(3), "b": _spd(2, seed=3)}
    x = {"a": _rand(3), "b": _rand(2)}
    y = normalize_matvec(A)(x)
    assert torch.allclose(y["a"], A["a"] @ x["a"]) and torch.allclose(y["b"], A["b"] @ x["b"])
    with pytest.raises(TypeError, match="square matrix"):
        normalize_matvec(torch.ones(2, 3))


@pytest.mark.parametrize("precondition", [False, True])
def test_cg_solves_a_tree_system_exactly(precondition):
    A = _spd(6, cond=50.0)
    b = {"a": _rand(2), "b": _rand(2, 2, seed=2)}
    M = None
    if precondition:  # Jacobi on the tree
        d = torch.diagonal(A)
        M = _tree_matvec(torch.diag(1 / d))
    x = linalg.cg(_tree_matvec(A), b, rtol=1e-13, M=M)
    want = torch.linalg.solve(A, torch.cat([b["a"], b["b"].reshape(-1)]))
    assert torch.allclose(torch.cat([x["a"], x["b"].reshape(-1)]), want, rtol=0, atol=1e-11)


def test_cg_scalar_has_a_nonzero_budget():
    # TorchOpt #222: maxiter = 10 * size was 0 for a 0-d tensor, so the solution stayed x0 = 0.
    x = linalg.cg(lambda v: 4.0 * v, torch.tensor(2.0, dtype=D))
    assert x.item() == pytest.approx(0.5, abs=1e-15)


def test_cg_vmap_over_systems_equals_a_loop():
    A = torch.stack([_spd(5, seed=s, cond=20.0) for s in range(8)])
    b = _rand(8, 5)
    batched = torch.func.vmap(lambda A, b: linalg.cg(A, b, rtol=1e-12))(A, b)
    looped = torch.stack([linalg.cg(A[i], b[i], rtol=1e-12) for i in range(8)])
    assert torch.allclose(batched, looped, rtol=0, atol=1e-12)
    assert torch.allclose(batched, torch.linalg.solve(A, b), rtol=0, atol=1e-10)


def test_cg_loop_reads_nothing_on_the_host(monkeypatch):
    """check_every=None: no .item()/bool() anywhere (a GPU would never synchronise)."""
    A, b = _spd(5), _rand(5)
    expected = linalg.cg(A, b, rtol=1e-12, maxiter=30)

    def forbidden(*args, **kwargs):
        raise AssertionError("host read inside cg")

    for name in ("item", "__bool__", "tolist", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    x = linalg.cg(A, b, rtol=1e-12, maxiter=30, check_every=None)
    monkeypatch.undo()
    # Freezing converged iterates makes the early exit invisible: the same bits either way.
    assert torch.equal(x, expected)


def test_cg_reads_the_host_only_every_check_every_iterations(monkeypatch):
    reads = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or original(t))
    linalg.cg(_spd(40, cond=1e3), _rand(40), rtol=1e-10, maxiter=64, check_every=8)
    monkeypatch.undo()
    assert len(reads) <= 64 // 8 + 1  # the in-loop checks, and one at the end


def test_cg_warns_with_the_residual_when_it_does_not_converge():
    with pytest.warns(RuntimeWarning, match=r"cg did not converge in maxiter=2 .*residual norm "):
        linalg.cg(_spd(10, cond=1e4), _rand(10), maxiter=2)


def test_cg_rejects_a_zero_budget():
    with pytest.raises(ValueError, match="maxiter"):
        linalg.cg(_spd(3), _rand(3), maxiter=0)


def test_cg_differentiates_through_its_iterations():
    """create_graph backwards of an implicit root differentiate the solve: it stays exact."""
    A = _spd(4)
    b = _rand(4).requires_grad_()
    x = linalg.cg(A, b, rtol=1e-14)
    (g,) = torch.autograd.grad(x.sum(), b)
    assert torch.allclose(g, torch.linalg.solve(A, torch.ones(4, dtype=D)), atol=1e-10)


def test_ns_and_ns_inv_match_the_inverse():
    A = _spd(5, cond=4.0)
    alpha = 1.0 / 4.0
    b = _rand(5)
    assert torch.allclose(linalg.ns(A, b, maxiter=200, alpha=alpha), torch.linalg.solve(A, b))
    assert torch.allclose(linalg.ns_inv(A, maxiter=200, alpha=alpha), torch.linalg.inv(A))
    small = torch.diag(torch.tensor([0.5, 0.8], dtype=D))  # spectral radius of I - A < 1
    assert torch.allclose(linalg.ns_inv(small, maxiter=200), torch.linalg.inv(small))


def test_ns_warns_when_the_series_diverges():
    with pytest.warns(RuntimeWarning, match="Neumann series diverges"):
        linalg.ns(_spd(5, cond=4.0), _rand(5), maxiter=20, alpha=1.0)


def test_materialize_keeps_the_coupling_between_leaves():
    # TorchOpt keeps only the diagonal blocks (one per leaf) and drops the coupling.
    A = _rand(6, 6, seed=5)
    x = {"a": _rand(2), "b": _rand(2, 2)}
    dense, ravel, unravel = materialize_matvec(_tree_matvec(A), x)
    assert torch.allclose(dense, A)
    assert torch.equal(unravel(ravel(x))["b"], x["b"])


@pytest.mark.parametrize(
    "solver",
    [
        linear_solve.solve_cg(rtol=1e-13),
        linear_solve.solve_normal_cg(rtol=1e-15, maxiter=200),
        linear_solve.solve_inv(),
        linear_solve.solve_inv(ns=True, maxiter=400, alpha=1 / 10.0),
    ],
    ids=["cg", "normal_cg", "inv", "inv_ns"],
)
def test_linear_solvers_agree_with_a_dense_solve(solver):
    A = _spd(6, cond=10.0)
    b = {"a": _rand(2), "b": _rand(2, 2, seed=2)}
    x = solver(_tree_matvec(A), b)
    want = torch.linalg.solve(A, torch.cat([b["a"], b["b"].reshape(-1)]))
    assert torch.allclose(torch.cat([x["a"], x["b"].reshape(-1)]), want, rtol=0, atol=1e-10)


def test_ridge_shifts_the_operator():
    A, b = _spd(4), _rand(4)
    x = linear_solve.solve_cg(ridge=0.5, rtol=1e-13)(lambda v: A @ v, b)
    assert torch.allclose(x, torch.linalg.solve(A + 0.5 * torch.eye(4, dtype=D), b))


def test_warm_start_reuses_the_previous_solution():
    A, b = _spd(20, cond=100.0), _rand(20)
    want = torch.linalg.solve(A, b)
    cold = linear_solve.solve_cg(maxiter=3)
    warm = linear_solve.solve_cg(maxiter=3, warm_start=True)
    with pytest.warns(RuntimeWarning):
        errors_cold = [(cold(lambda v: A @ v, b) - want).norm() for _ in range(3)]
    with pytest.warns(RuntimeWarning):
        errors_warm = [(warm(lambda v: A @ v, b) - want).norm() for _ in range(3)]
    assert errors_cold[0] == errors_cold[2]  # no memory
    assert errors_warm[0] == errors_cold[0]
    assert errors_warm[2] < errors_warm[1] < errors_warm[0]  # each solve continues the last
