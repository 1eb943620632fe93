"""What the CPU benchmark scripts share: interleaved CPU timing with a loss check, the machine line of a
table, and writing ``OUT.json`` and ``OUT.md``."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from pact.atomic_files import write_text_atomic


def time_cases(step, cases, inputs, repeats: int, agree: dict) -> dict:
    """Median CPU seconds (``time.process_time``) per case of ``step(case, inputs)``, which runs one case and
    returns its loss: one thread, ``repeats`` rounds after a warm-up round, the cases interleaved call by call
    (on a shared machine one thread's CPU time swings much less with the other load than wall time).

    ``agree``: ``{case: other case}`` whose last losses must agree to 1e-4 (relative), else RuntimeError (a
    benchmark of a wrong result would be worthless).
    """
    torch.set_num_threads(1)
    seconds = {case: [] for case in cases}
    losses = {}
    for rep in range(repeats + 1):
        for case in cases:
            start = time.process_time()
            losses[case] = step(case, inputs)
            if rep:  # the first round warms up
                seconds[case].append(time.process_time() - start)
    for case, other in agree.items():
        if abs(losses[case] - losses[other]) > 1e-4 * abs(losses[other]):
            raise RuntimeError(f"{case}: loss {losses[case]} != {other} {losses[other]}")
    return {case: statistics.median(v) for case, v in seconds.items()}


def machine_line() -> str:
    """``CPU: <machine>, <n> cores, torch <version>``: how a table's first line starts."""
    return f"CPU: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def write_results(out: str | Path, data, table: str) -> None:
    """``out.json`` (``data``, indented) and ``out.md`` (``table``), each written atomically; prints the table."""
    out = Path(out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), table)
    print(table)
