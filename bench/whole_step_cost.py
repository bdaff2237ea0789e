"""Compile cost of the whole-step MAML, measured in a fresh process.

``python bench/whole_step_cost.py FORM K [HIDDEN]`` builds the MAML problem of
``maml_problem.py`` (MLP 128-H-H-10, H=256 by default: ~100k parameters) in the ``FORM``
``step`` (``@optcompile`` on one inner step, called K times) or ``loop`` (the K steps inside one
decorated function), runs the first outer iteration and prints one JSON line:

- ``seconds``: wall time from the first call of the decorated function to the outer gradient
  of the first outer iteration (``tx.init``, K inner steps, outer loss and its backward),
  i.e. what a user waits for before training starts, compiles and cache loads included;
- ``graphs``: graphs Dynamo compiled (``torch._dynamo.utils.counters``);
- ``phases``: seconds summed per compile phase (``torch._dynamo.utils.compilation_time_metrics``
  — Dynamo's trace, the Inductor compile of forward and backward), for finding where time goes.

The caller chooses the caches through the environment: ``OPTCOMPILE_CACHE_DIR`` (which
optcompile exports as ``TORCHINDUCTOR_CACHE_DIR`` before its first compile) and
``TRITON_CACHE_DIR``; an empty directory measures a cold compile, the same directory again in a
new process a warm start. One thread, as every benchmark here.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

PHASES = {
    "dynamo_trace": "_compile.compile_inner",
    "backend_compile": "OutputGraph.call_user_compiler",
    "inductor_codegen": "GraphLowering.compile_to_module",
}


def main() -> None:
    form, steps = sys.argv[1], int(sys.argv[2])
    hidden = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    start_import = time.perf_counter()
    import torch
    from maml_problem import (
        make_net,
        optcompile_whole_loop_iteration,
        optcompile_whole_step_iteration,
    )

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    factory = {"step": optcompile_whole_step_iteration, "loop": optcompile_whole_loop_iteration}
    iteration = factory[form](make_net(hidden), steps)
    imported = time.perf_counter() - start_import

    start = time.perf_counter()
    iteration()
    seconds = time.perf_counter() - start

    from torch._dynamo.utils import compilation_time_metrics, counters

    phases = {name: sum(compilation_time_metrics.get(key, [])) for name, key in PHASES.items()}
    print(
        json.dumps(
            {
                "form": form,
                "steps": steps,
                "seconds": seconds,
                "import_seconds": imported,
                "graphs": int(counters["stats"]["unique_graphs"]),
                "phases": phases,
            }
        )
    )


if __name__ == "__main__":
    main()
