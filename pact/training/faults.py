"""Fault injection for the resume tests: ``PACT_FAULT=POINT:N`` SIGKILLs the process at the N-th visit of POINT.

The named points are places where a real crash (power loss, OOM killer,
pre-emption) does the most damage: ``step`` (after the backward, before the
optimizer step), ``logged`` (a step logged, its checkpoint not yet written),
``checkpoint-write`` (the checkpoint's files half written in ``.tmp``),
``checkpoint-rename`` (renamed, the ``latest`` pointer not yet updated). Unset,
:func:`fault_point` costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_visits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL when ``PACT_FAULT`` names this point and visit."""
    spec = os.environ.get("PACT_FAULT")
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _visits[name] = _visits.get(name, 0) + 1
    if _visits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
