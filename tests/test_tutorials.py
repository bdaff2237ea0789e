"""TorchOpt's tutorials 1, 2 and 4 as executed notebooks in docs/: each one's code cells run in
order in one namespace and print what the notebook shows (numbers to 1e-5 relative)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"
NOTEBOOKS = [
    "tutorial_functional_optimizer.ipynb",
    "tutorial_visualization.ipynb",
    "tutorial_stop_gradient.ipynb",
]
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")


def _load(name: str) -> dict:
    notebook = json.loads((DOCS / name).read_text())
    assert notebook["nbformat"] == 4 and isinstance(notebook["cells"], list)
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code")
        assert isinstance(cell["source"], list) and "metadata" in cell
        if cell["cell_type"] == "code":
            assert isinstance(cell["outputs"], list) and "execution_count" in cell
    return notebook


def _printed(cell: dict) -> str:
    return "".join(
        "".join(out["text"]) for out in cell["outputs"] if out["output_type"] == "stream"
    )


def _same(expected: str, got: str) -> bool:
    if NUMBER.sub("#", expected) != NUMBER.sub("#", got):
        return False
    pairs = zip(NUMBER.findall(expected), NUMBER.findall(got), strict=True)
    return all(abs(float(a) - float(b)) <= 1e-5 * max(1.0, abs(float(a))) for a, b in pairs)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_runs_and_prints_what_it_shows(name):
    notebook = _load(name)
    namespace: dict = {"__name__": "__main__"}
    threads = torch.get_num_threads()
    try:
        for k, cell in enumerate(c for c in notebook["cells"] if c["cell_type"] == "code"):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile("".join(cell["source"]), f"{name}[{k}]", "exec"), namespace)  # noqa: S102
            expected, got = _printed(cell), buffer.getvalue()
            assert _same(expected, got), f"{name}, code cell {k}:\n{expected}\n!=\n{got}"
    finally:
        torch.set_num_threads(threads)
