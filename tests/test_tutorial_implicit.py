"""docs/tutorial_implicit_differentiation.ipynb: its code cells run in order in one namespace
(as a kernel would), print what the notebook shows, and compute what the text claims."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial_implicit_differentiation.ipynb"
UNSTABLE = ("largest difference",)  # a ~1e-11 float whose digits depend on the platform


@pytest.fixture(scope="module")
def executed():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    namespace: dict = {"__name__": "__main__"}
    printed = []
    dtype = torch.get_default_dtype()
    try:
        for index, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile("".join(cell["source"]), f"<cell {index}>", "exec"), namespace)
            stored = "".join(
                "".join(out["text"]) for out in cell["outputs"] if out.get("name") == "stdout"
            )
            printed.append((buffer.getvalue(), stored))
    finally:
        torch.set_default_dtype(dtype)
    return namespace, printed


def test_cells_print_what_the_notebook_shows(executed):
    _, printed = executed
    for fresh, stored in printed:
        keep = lambda text: [ln for ln in text.splitlines() if not ln.startswith(UNSTABLE)]  # noqa: E731
        assert keep(fresh) == keep(stored)
    assert any("default adjoint solver: solve_cg" in fresh for fresh, _ in printed)


def test_functional_imaml_solvers_agree(executed):
    ns, _ = executed
    for a, b in zip(ns["meta_grads"], ns["meta_grads_ns"], strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-8)
    assert ns["jac_error"] < 1e-8


def test_module_api_matches_and_learns_the_hyperparameter(executed):
    ns, _ = executed
    for a, b in zip(ns["oop_meta_grads"], ns["meta_grads"], strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-4)  # 100 SGD steps: converged to ~1e-5
    assert ns["hypergrad"].item() == pytest.approx(ns["expected"], rel=1e-5)


def test_fixed_point_module_matches_custom_fixed_point(executed):
    ns, _ = executed
    assert torch.allclose(ns["deq_grad"], ns["functional_grad"], rtol=0, atol=1e-8)
