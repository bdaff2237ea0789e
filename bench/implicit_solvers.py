"""Adjoint solvers of implicit differentiation: time and accuracy of one hypergradient.

Run: ``python bench/implicit_solvers.py`` (TorchOpt 0.7.3 optional). Softmax regression with
1000 inner parameters (100 features x 10 classes), float64, L2 strength as the
hyper-parameter; the exact hypergradient uses the materialised Hessian. Contenders run
round-robin in one process; the table gives medians of thread time and wall time.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import optcompile

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(0)
X, Xv = torch.randn(500, 100, generator=g), torch.randn(200, 100, generator=g)
true_w = torch.randn(100, 10, generator=g)
y, yv = (X @ true_w).argmax(1), (Xv @ true_w).argmax(1)


def inner(w, l2):
    return F.cross_entropy(X @ w, y) + 0.5 * l2 * (w * w).sum()


def outer(w):
    return F.cross_entropy(Xv @ w, yv)


def optimality(w, l2):
    return torch.func.grad(inner)(w, l2)


L2 = torch.tensor(0.05)
w_star = torch.zeros(100, 10, requires_grad=True)
lbfgs = torch.optim.LBFGS([w_star], lr=1, max_iter=500, tolerance_grad=1e-12,
                          tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip


def closure():
    lbfgs.zero_grad()
    loss = inner(w_star, L2)
    loss.backward()
    return loss


lbfgs.step(closure)
w_star = w_star.detach()
H = torch.func.hessian(inner)(w_star, L2).reshape(1000, 1000)
gv = torch.func.grad(outer)(w_star).reshape(-1)
exact = float(-gv @ torch.linalg.solve(H, w_star.reshape(-1)))


def contender(module, solve):
    @module.diff.implicit.custom_root(optimality, argnums=1, solve=solve)
    def solver(w0, l2):
        return w_star.clone()

    def hypergradient():
        l2 = L2.clone().requires_grad_()
        (grad,) = torch.autograd.grad(outer(solver(w_star, l2)), l2)
        return float(grad)

    return hypergradient


contenders = {
    "optcompile solve_cg": contender(optcompile, optcompile.linear_solve.solve_cg()),
    "optcompile solve_normal_cg": contender(optcompile, optcompile.linear_solve.solve_normal_cg()),
}
try:
    import torchopt

    contenders["torchopt solve_cg"] = contender(torchopt, torchopt.linear_solve.solve_cg())
    contenders["torchopt solve_normal_cg"] = contender(
        torchopt, torchopt.linear_solve.solve_normal_cg()
    )
except ImportError:
    pass

times = {name: ([], []) for name in contenders}
errors = {}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # functorch deprecation warnings from TorchOpt
    for _ in range(7):
        for name, run in contenders.items():
            t0, w0 = time.thread_time(), time.perf_counter()
            value = run()
            times[name][0].append(time.thread_time() - t0)
            times[name][1].append(time.perf_counter() - w0)
            errors[name] = abs(value - exact) / abs(exact)
print(f"exact hypergradient {exact:.6e}")
print(f"{'contender':28s} {'rel. error':>10s} {'thread ms':>10s} {'wall ms':>10s}")
for name, (cpu, wall) in times.items():
    print(f"{name:28s} {errors[name]:10.1e} {1e3 * statistics.median(cpu):10.1f} "
          f"{1e3 * statistics.median(wall):10.1f}")  # fmt: skip
