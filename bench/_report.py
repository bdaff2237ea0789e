"""Collect benchmark rows, then print a table and write JSON and a PNG plot per suite.

Each suite adds rows with :func:`add_row`; ``bench/conftest.py`` calls :func:`write_reports`
when the session ends. Results go to ``bench/results/`` (git-ignored).
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
_rows: dict[str, list[dict[str, Any]]] = defaultdict(list)


def add_row(suite: str, **row: Any) -> None:
    """Record one measured row of ``suite`` (values: numbers or short strings)."""
    _rows[suite].append(row)


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "-|-".join("-" * w for w in widths)
    body = [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_reports(plot_specs: dict[str, tuple[str, str, str]]) -> list[str]:
    """Write every suite's JSON and plot; return the printed tables.

    Args:
        plot_specs: suite -> (x column, y column, series column) for its PNG plot.
    """
    RESULTS.mkdir(exist_ok=True)
    printed = []
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    for suite, rows in _rows.items():
        (RESULTS / f"{suite}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        printed.append(f"\n== {suite} ==\n{_table(rows)}")
        if suite in plot_specs:
            _plot(suite, rows, *plot_specs[suite])
    return printed


def _plot(suite: str, rows: list[dict[str, Any]], x: str, y: str, series: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r[series] for r in rows):
        points = sorted((r[x], r[y]) for r in rows if r[series] == name and y in r)
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=str(name))
    ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(suite)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{suite}.png", dpi=100)
    plt.close(fig)
