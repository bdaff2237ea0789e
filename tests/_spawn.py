"""Run a function on N local processes (127.0.0.1 only) and collect each rank's result or error.

Every run is bounded: the caller's process-group/RPC timeouts make a stuck collective fail, the
join has a deadline, and whatever is still alive after it is killed. A rank's return value (or
its exception's type, message and traceback) comes back through a file per rank.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, out: str, kw: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME="lo",
        TP_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    try:
        result: dict[str, Any] = {"value": fn(rank, world, **kw)}
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which judges it
        result = {
            "error": type(error).__name__,
            "message": str(error),
            "traceback": traceback.format_exc(),
        }
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


def run_ranks(
    fn: Callable[..., Any], *, world: int = 2, timeout: float = 90.0, **kw: Any
) -> list[dict[str, Any]]:
    """``fn(rank, world, **kw)`` on ``world`` spawned processes; one result dict per rank.

    Each dict has ``value`` (what ``fn`` returned) or ``error``/``message``/``traceback``; a rank
    that wrote nothing (killed at the deadline, crashed) gets ``error="NoResult"``.
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as out:
        procs = [
            ctx.Process(target=_entry, args=(fn, rank, world, port, out, kw), daemon=True)
            for rank in range(world)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        results = []
        for rank in range(world):
            path = os.path.join(out, f"rank{rank}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    results.append(pickle.load(f))
            else:
                results.append({"error": "NoResult", "message": f"rank {rank} wrote nothing"})
        return results


def values(results: list[dict[str, Any]]) -> list[Any]:
    """The ranks' return values; fails with every rank's traceback if one raised."""
    failed = [r for r in results if "error" in r]
    if failed:
        raise AssertionError(
            "\n".join(r.get("traceback", f"{r['error']}: {r['message']}") for r in failed)
        )
    return [r["value"] for r in results]
