"""Free DeepSpeed's shared-memory allreduce buffers when the run ends, however it ends.

On a machine where every rank is local (the ``deepspeed`` launcher sets ``LOCAL_SIZE``),
DeepSpeed's CPU communication op maps one 64 MiB file per rank,
``/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``, and never
unlinks it: each run (finished, crashed or killed) leaves its files, and their RAM, behind
until the machine reboots. Once every rank has mapped every other rank's file, the names are
no longer needed: unlinking them keeps the mappings valid and the memory is freed when the
last rank exits.
"""
from __future__ import annotations

import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")


def shm_buffer_path(rank: int, env: dict | None = None) -> Path:
    """The file DeepSpeed's shm op creates for ``rank`` (from MASTER_ADDR / MASTER_PORT, as DeepSpeed reads them)."""
    env = os.environ if env is None else env
    return SHM_DIR / (f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_"
                      f"{env.get('MASTER_PORT', '')}_{rank}")


def unlink_shm_buffer(rank: int, world: int) -> bool:
    """Call right after ``deepspeed.init_distributed`` on every rank: waits until every rank has mapped the
    others' buffers (a barrier), then removes this rank's name. Returns whether a file was removed."""
    if int(os.environ.get("LOCAL_SIZE", "0") or 0) != world:  # DeepSpeed maps shm only when all ranks are local
        return False
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    try:
        shm_buffer_path(rank).unlink()
    except FileNotFoundError:
        return False
    return True
