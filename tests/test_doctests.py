"""Every docstring example in the package runs, as a doctest, and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import optcompile


def _modules() -> list[str]:
    names = ["optcompile"]
    for info in pkgutil.walk_packages(optcompile.__path__, "optcompile."):
        if not info.name.startswith("optcompile.csrc"):
            names.append(info.name)
    return sorted(names)


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder().find(module) if t.examples]


WITH_EXAMPLES = [name for name in _modules() if _examples(name)]


def test_the_package_has_docstring_examples():
    assert sum(len(t.examples) for name in WITH_EXAMPLES for t in _examples(name)) >= 20


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    tests = _examples(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
