"""Collectives that work with and without a process group (one process: no-ops), and ZeRO-3 gathering.

- :func:`is_distributed`: a process group with more than one rank is up;
- :func:`barrier`: ``torch.distributed.barrier()`` when a process group is up;
- :func:`from_rank0`: rank 0's string on every rank;
- :func:`gathered`: a context in which ZeRO-3-partitioned parameters are whole;
- :func:`destroy_at_exit`: the process group is destroyed before the interpreter shuts down.
"""
from __future__ import annotations

import atexit
import contextlib

import torch

__all__ = ["barrier", "destroy_at_exit", "from_rank0", "gathered", "is_distributed"]


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return _initialized() and torch.distributed.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if _initialized():
        torch.distributed.barrier()


def from_rank0(text: str) -> str:
    """Rank 0's ``text`` on every rank (``text`` itself without a process group of more than one rank)."""
    if is_distributed():
        box = [text]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return text


def gathered(params):
    """Context in which the ZeRO-3-partitioned ones of ``params`` are gathered on every rank, read only
    (``modifier_rank=None``); a no-op when none is partitioned (no DeepSpeed import then)."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def _destroy_if_initialized() -> None:
    if _initialized():
        torch.distributed.destroy_process_group()


def destroy_at_exit() -> None:
    """Destroy the default process group at interpreter exit, while Python is still whole (once per process).

    A process that exits with a gloo process group still up can abort in interpreter finalization
    ("terminate called without an active exception", exit code -6): gloo's worker threads still hold
    finished work whose tensors are freed after the interpreter is gone. ``atexit`` handlers run before
    that; a group the program destroyed itself is left alone.
    """
    atexit.unregister(_destroy_if_initialized)
    atexit.register(_destroy_if_initialized)
