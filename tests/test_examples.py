"""The examples run and do what they say (small sizes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learning_rate_is_meta_learned_upwards_from_too_small():
    rows = _load("learn_the_learning_rate").train(outer_iterations=100)
    (_, lr_50, _), (_, lr_100, _) = rows
    assert 1e-3 < lr_50 < lr_100  # the hypergradient says a bigger inner step helps


def test_imaml_example_meta_learns_a_better_prior():
    before, after = _load("imaml").train(outer_steps=30, meta_batch=8, inner_steps=40)
    assert after < 0.8 * before  # adapted query loss on held-out tasks improves
