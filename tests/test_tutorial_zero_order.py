"""``docs/tutorial_zero_order.ipynb``: its code cells run in order, and print what they claim.

The notebook is read with ``json`` (no Jupyter needed); the code cells run in one namespace with
stdout captured, and the key printed values are checked: losses fall, ``forward`` and
``antithetic`` estimates match the true gradient, autograd's gradient of the rounded loss is
zero while zero-order training lowers it, orthogonal directions lower the error. The stored
outputs must say the same things as a fresh run (the numbers may differ in the last digits).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import torch

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial_zero_order.ipynb"
FLOAT = r"(-?\d+\.\d+)"


def _code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


@pytest.fixture(scope="module")
def notebook():
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    return notebook


@pytest.fixture(scope="module")
def printed(notebook):
    """What each code cell prints when the cells run in order in one namespace."""
    namespace = {"__name__": "__main__"}
    outputs = []
    for i, cell in enumerate(_code_cells(notebook)):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile("".join(cell["source"]), f"<cell {i}>", "exec"), namespace)
        outputs.append(buffer.getvalue())
    return outputs


def _stored(notebook):
    return [
        "".join(text for out in cell["outputs"] if out["output_type"] == "stream"
                for text in out["text"])
        for cell in _code_cells(notebook)
    ]  # fmt: skip


def _losses(text, label="loss"):
    return [float(v) for v in re.findall(rf"{label} = {FLOAT}", text)]


def _check(outputs):
    _, functional, quality, module, rounded, orthogonal = outputs
    for text in (functional, module):
        losses = _losses(text)
        assert len(losses) == 6 and losses[-1] < 0.1 * losses[0], text
    estimates = dict(
        (m, (float(r), float(c)))
        for m, r, c in re.findall(rf"(\w+): \|estimate\|/\|true\| = +{FLOAT}, cosine = +{FLOAT}",
                                  quality)
    )  # fmt: skip
    assert set(estimates) == {"naive", "forward", "antithetic"}
    for method in ("forward", "antithetic"):
        ratio, cosine = estimates[method]
        assert 0.9 < ratio < 1.1 and cosine > 0.95, quality
    assert "autograd gradient of the rounded loss: tensor([[0., 0., 0." in rounded
    rounded_losses = _losses(rounded, "rounded loss")
    assert rounded_losses[-1] < 0.1 * rounded_losses[0], rounded
    plain, ortho = (float(v) for v in re.findall(rf"mean squared error = {FLOAT}", orthogonal))
    assert ortho < 0.5 * plain, orthogonal


def test_notebook_runs_and_prints_what_it_claims(printed):
    torch.set_num_threads(1)
    _check(printed)


def test_stored_outputs_say_the_same(notebook, printed):
    stored = _stored(notebook)
    _check(stored)
    for fresh, kept in zip(printed, stored, strict=True):  # same lines, numbers aside
        assert re.sub(FLOAT, "#", fresh) == re.sub(FLOAT, "#", kept)
