"""Benchmarks: one thread (shared 2-core hosts), and a report per suite when the session ends.

Run: ``pip install -e '.[bench]' && python -m pytest bench -q -s``. Each suite prints a table
and writes ``bench/results/<suite>.json`` and ``.png``. Compare ratios measured in the same run,
never absolute times across runs.
"""

import pytest
import torch
from _report import write_reports

PLOTS = {
    "bandwidth": ("params", "ratio_to_bound", "variant"),
    "maml": ("params", "seconds_per_iteration", "implementation"),
    "native": ("params", "ms", "variant"),
}


def pytest_configure(config):
    # The test suite turns warnings into errors; peers' and torch's own warnings (e.g. Dynamo
    # touching .grad of non-leaf tensors) must not abort a benchmark.
    config.addinivalue_line("filterwarnings", "default")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)
    yield


def pytest_sessionfinish(session, exitstatus):
    for table in write_reports(PLOTS):
        print(table)
