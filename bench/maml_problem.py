"""The MAML-style benchmark problem and every implementation compared on it.

One outer iteration: K inner Adam steps (lr 1e-3, eps_root 0) of an MLP 128-H-H-10 with tanh on
a 32-sample batch, then an MSE loss on 32 validation samples and its backward to the initial
weights. Implementations: optcompile's forms (``@optcompile`` on the functional step, the
loop, the whole meta-gradient; the last also with plain SGD, the floor of that form), MetaAdam
on the fused backends; ``torch.compile`` of a plain hand-written Adam step (backward derived by
AOTAutograd) in a torch.func loop; a plain ``p - lr * g`` loop; TorchOpt's MetaAdam and
higher's Adam when installed (extra ``bench``).

Also runnable as a worker, ``python bench/maml_problem.py IMPL HIDDEN``, which prints the peak
resident memory growth of one iteration (MiB) as JSON: memory is measured in a fresh process per
configuration so that implementations do not share an allocator's history.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from torch.func import functional_call

INNER_STEPS = 5
HIDDEN_FOR_SIZE = {"100k": 256, "1M": 930, "5M": 2170}


def make_net(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(128, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, 10),
    )  # fmt: skip


def make_data() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(32, d, generator=generator) for d in (128, 10, 128, 10))


def parameter_count(hidden: int) -> int:
    return sum(p.numel() for p in make_net(hidden).parameters())


def meta_adam_adapter(
    net: nn.Module, backend: str | None = None
) -> tuple[Callable[..., None], Callable[[], None]]:
    """``(adapt, restore)``: ``adapt(x, y)`` takes K inner ``MetaAdam`` steps on ``net`` in
    place (``backend``: the steps' backend, ``None`` for the default); ``restore()`` puts back
    ``net``'s initial weights and the optimizer's initial state (a loss of the adapted ``net``
    keeps its graph to the initial weights, before or after the restore)."""
    import optcompile

    optim = optcompile.MetaAdam(net, lr=1e-3, backend=backend)
    net_state = optcompile.extract_state_dict(net, by="reference")
    optim_state = optcompile.extract_state_dict(optim, by="reference")

    def adapt(x: torch.Tensor, y: torch.Tensor) -> None:
        for _ in range(INNER_STEPS):
            optim.step(((net(x) - y) ** 2).mean())

    def restore() -> None:
        optcompile.recover_state_dict(net, net_state)
        optcompile.recover_state_dict(optim, optim_state)

    return adapt, restore


def whole_step_adapter(
    net: nn.Module,
    steps: int = INNER_STEPS,
    memory_budget: float | None = None,
    options: dict | None = None,
) -> tuple[Callable[..., tuple], Callable[..., torch.Tensor]]:
    """``(adapt, loss)``: ``adapt(x, y)`` returns the fast parameters and Adam state after
    ``steps`` functional Adam steps from ``net``'s parameters, each inner step (model, loss,
    inner gradient, update) compiled whole by ``@optcompile`` (``memory_budget``, ``options``:
    its arguments); ``loss(params, inputs, targets)`` is the MSE of ``net`` with ``params``."""
    from torch.func import grad

    import optcompile

    tx = optcompile.adam(lr=1e-3)

    def loss(params, inputs, targets):
        return ((functional_call(net, params, (inputs,)) - targets) ** 2).mean()

    @optcompile.optcompile(memory_budget=memory_budget, options=options)
    def inner_step(params, state, x, y):
        grads = grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params=params, inplace=False)
        return optcompile.apply_updates(params, updates, inplace=False), state

    params = dict(net.named_parameters())

    def adapt(x: torch.Tensor, y: torch.Tensor) -> tuple:
        fast, state = params, tx.init(params)
        for _ in range(steps):
            fast, state = inner_step(fast, state, x, y)
        return fast, state

    return adapt, loss


def optcompile_iteration(net: nn.Module, backend: str) -> Callable[[], None]:
    """``MetaAdam`` on ``backend``: per-step fused kernels."""
    adapt, restore = meta_adam_adapter(net, backend)
    x, y, xv, yv = make_data()

    def iteration() -> None:
        adapt(x, y)
        ((net(xv) - yv) ** 2).mean().backward()
        restore()

    return iteration


def optcompile_whole_step_iteration(
    net: nn.Module,
    steps: int = INNER_STEPS,
    memory_budget: float | None = None,
    options: dict | None = None,
) -> Callable[[], None]:
    """The inner step (model, loss, inner gradient, Adam) compiled whole by ``@optcompile``."""
    adapt, loss = whole_step_adapter(net, steps, memory_budget, options)
    x, y, xv, yv = make_data()

    def iteration() -> None:
        fast, state = adapt(x, y)  # both alive through the backward, as in a user's loop
        loss(fast, xv, yv).backward()

    return iteration


def optcompile_whole_loop_iteration(net: nn.Module, steps: int = INNER_STEPS) -> Callable[[], None]:
    """All K inner steps in one ``@optcompile`` function: one graph, compiled per K."""
    from torch.func import grad

    import optcompile

    x, y, xv, yv = make_data()
    tx = optcompile.adam(lr=1e-3)

    def loss(params, inputs, targets):
        return ((functional_call(net, params, (inputs,)) - targets) ** 2).mean()

    @optcompile.optcompile
    def adapt(params, state):
        for _ in range(steps):
            grads = grad(loss)(params, x, y)
            updates, state = tx.update(grads, state, params=params, inplace=False)
            params = optcompile.apply_updates(params, updates, inplace=False)
        return params

    params = dict(net.named_parameters())

    def iteration() -> None:
        loss(adapt(params, tx.init(params)), xv, yv).backward()

    return iteration


def meta_gradient_adapter(
    net: nn.Module, options: dict | None = None, optimizer: str = "adam"
) -> Callable[..., dict[str, torch.Tensor]]:
    """``meta_gradient(params, x, y, xv, yv)``: one task's meta-gradient as a value.

    ``torch.func.grad`` of the K-step unroll (inner steps on ``x, y``, loss on ``xv, yv``)
    inside one ``@optcompile`` function: one forward graph computes the meta-gradient (no
    autograd graph between steps); compiled per K, and its compile time grows with K (the loop
    is unrolled). ``params``: a dict of detached tensors keyed like ``net.named_parameters()``.
    ``options``: Inductor settings (``@optcompile(options=...)``). ``optimizer``: ``"adam"``
    (the problem's), or ``"sgd"``: plain SGD, the same model work with an update of one
    multiply-add per element, so that the difference of the two is Adam's share.
    """
    from torch.func import grad

    import optcompile

    tx = optcompile.adam(lr=1e-3) if optimizer == "adam" else optcompile.sgd(lr=1e-3)

    def loss(params, inputs, targets):
        return ((functional_call(net, params, (inputs,)) - targets) ** 2).mean()

    @optcompile.optcompile(options=options)
    def meta_gradient(params, x, y, xv, yv):
        def outer(params):
            fast, state = params, tx.init(params)
            for _ in range(INNER_STEPS):
                grads = grad(loss)(fast, x, y)
                updates, state = tx.update(grads, state, params=fast, inplace=False)
                fast = optcompile.apply_updates(fast, updates, inplace=False)
            return loss(fast, xv, yv)

        return grad(outer)(params)

    tx.init(dict(net.named_parameters()))  # builds the kernels outside the compiled function
    return meta_gradient


def optcompile_meta_gradient_iteration(
    net: nn.Module, options: dict | None = None, optimizer: str = "adam"
) -> Callable[[], None]:
    """The whole meta-gradient in one ``@optcompile`` function (:func:`meta_gradient_adapter`),
    added into ``.grad`` of ``net``'s parameters."""
    meta_gradient = meta_gradient_adapter(net, options, optimizer)
    data = make_data()
    parameters = dict(net.named_parameters())

    def iteration() -> None:
        gradients = meta_gradient({k: v.detach() for k, v in parameters.items()}, *data)
        for k, p in parameters.items():
            p.grad = gradients[k] if p.grad is None else p.grad + gradients[k]

    return iteration


def _plain_adam(params, grads, mus, nus, count):
    new_p, new_m, new_v = [], [], []
    for p, g, m, v in zip(params, grads, mus, nus, strict=True):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        u = (m / (1 - 0.9**count)) / (torch.sqrt(v / (1 - 0.999**count)) + 1e-8)
        new_p.append(p - 1e-3 * u)
        new_m.append(m)
        new_v.append(v)
    return new_p, new_m, new_v


def compiled_plain_adam_iteration(net: nn.Module) -> Callable[[], None]:
    x, y, xv, yv = make_data()
    names = [n for n, _ in net.named_parameters()]
    step = torch.compile(_plain_adam, dynamic=False)

    def loss(params, inputs, targets):
        out = functional_call(net, dict(zip(names, params, strict=True)), (inputs,))
        return ((out - targets) ** 2).mean()

    def iteration() -> None:
        params = [p for p in net.parameters()]
        mus = [torch.zeros_like(p) for p in params]
        nus = [torch.zeros_like(p) for p in params]
        for t in range(1, INNER_STEPS + 1):
            grads = torch.autograd.grad(loss(params, x, y), params, create_graph=True)
            params, mus, nus = step(params, grads, mus, nus, torch.tensor(float(t)))
        loss(params, xv, yv).backward()

    return iteration


def plain_sgd_iteration(net: nn.Module) -> Callable[[], None]:
    """The floor of a per-step path: ``p - lr * g`` in torch ops, no optimizer state."""
    x, y, xv, yv = make_data()
    names = [n for n, _ in net.named_parameters()]

    def loss(params, inputs, targets):
        out = functional_call(net, dict(zip(names, params, strict=True)), (inputs,))
        return ((out - targets) ** 2).mean()

    def iteration() -> None:
        params = list(net.parameters())
        for _ in range(INNER_STEPS):
            grads = torch.autograd.grad(loss(params, x, y), params, create_graph=True)
            params = [p - 1e-3 * g for p, g in zip(params, grads, strict=True)]
        loss(params, xv, yv).backward()

    return iteration


def torchopt_iteration(net: nn.Module) -> Callable[[], None]:
    import torchopt

    x, y, xv, yv = make_data()
    optim = torchopt.MetaAdam(net, lr=1e-3)
    net_state = torchopt.extract_state_dict(net, by="reference")
    optim_state = torchopt.extract_state_dict(optim, by="reference")

    def iteration() -> None:
        for _ in range(INNER_STEPS):
            optim.step(((net(x) - y) ** 2).mean())
        ((net(xv) - yv) ** 2).mean().backward()
        torchopt.recover_state_dict(net, net_state)
        torchopt.recover_state_dict(optim, optim_state)

    return iteration


def higher_iteration(net: nn.Module) -> Callable[[], None]:
    import higher

    x, y, xv, yv = make_data()
    inner = torch.optim.Adam(net.parameters(), lr=1e-3)

    def iteration() -> None:
        with higher.innerloop_ctx(net, inner, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(INNER_STEPS):
                diffopt.step(((fnet(x) - y) ** 2).mean())
            ((fnet(xv) - yv) ** 2).mean().backward()

    return iteration


IMPLEMENTATIONS: dict[str, Callable[[nn.Module], Callable[[], None]]] = {
    "optcompile-whole-step": optcompile_whole_step_iteration,
    "optcompile-whole-step-budget-0.5": lambda net: optcompile_whole_step_iteration(
        net, memory_budget=0.5
    ),
    "optcompile-whole-step-python-wrapper": lambda net: optcompile_whole_step_iteration(
        net, options={"cpp_wrapper": False}
    ),
    "optcompile-whole-loop": optcompile_whole_loop_iteration,
    "optcompile-meta-gradient": optcompile_meta_gradient_iteration,
    "optcompile-meta-gradient-python-wrapper": lambda net: optcompile_meta_gradient_iteration(
        net, options={"cpp_wrapper": False}
    ),
    "optcompile-meta-gradient-sgd": lambda net: optcompile_meta_gradient_iteration(
        net, optimizer="sgd"
    ),
    "optcompile-inductor": lambda net: optcompile_iteration(net, "inductor"),
    "optcompile-eager": lambda net: optcompile_iteration(net, "eager"),
    "optcompile-auto": lambda net: optcompile_iteration(net, "auto"),
    "optcompile-native": lambda net: optcompile_iteration(net, "native"),
    "torch.compile-plain-adam": compiled_plain_adam_iteration,
    "torchopt-0.7.3": torchopt_iteration,
    "higher-0.2.1": higher_iteration,
    "plain-sgd": plain_sgd_iteration,
}


def available(name: str) -> bool:
    module = {"torchopt-0.7.3": "torchopt", "higher-0.2.1": "higher"}.get(name)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def main() -> None:
    """Peak memory of one iteration above the memory held between iterations.

    Run with ``MALLOC_MMAP_THRESHOLD_=65536`` (the caller sets it) so that every tensor above
    64 KiB is its own mapping, returned to the system when freed: resident memory then follows
    live tensor bytes. ``/proc/self/clear_refs`` resets the peak (VmHWM) after warm-up.
    """
    impl, hidden = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    iteration = IMPLEMENTATIONS[impl](make_net(hidden))
    iteration()  # warm-up: compile, caches
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_mib("VmRSS")
    iteration()
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak_growth_mib": peak - baseline, "baseline_mib": baseline}))


if __name__ == "__main__":
    main()
