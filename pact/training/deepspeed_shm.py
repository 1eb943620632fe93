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
import sys
import time
import warnings
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


#: DeepSpeed's CPU communication op, built by torch's extension loader on a machine's first run
SHM_OP_NAME = "deepspeed_shm_comm"


def extension_build_dir(name: str = SHM_OP_NAME) -> Path:
    """Where torch builds the C++ extension ``name``: ``$TORCH_EXTENSIONS_DIR/name``, else torch's default root
    (``~/.cache/torch_extensions/py<XY>_<cpu|cuXY>/name``)."""
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        flavour = "cpu" if torch.version.cuda is None else "cu" + torch.version.cuda.replace(".", "")
        root = os.path.join(get_default_build_root(), f"py{sys.version_info.major}{sys.version_info.minor}_{flavour}")
    return Path(root) / name


def warn_stale_build_lock(name: str = SHM_OP_NAME, older_than_s: float = 600.0) -> Path | None:
    """Warn (and return the path) when the extension's build ``lock`` is older than ``older_than_s``.

    torch's loader waits, silently and without end, while that file exists; a process killed during the build
    leaves it behind, so every later run hangs before its first step. Called before DeepSpeed builds its op.
    """
    lock = extension_build_dir(name) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    if age < older_than_s:
        return None
    warnings.warn(f"{lock} is {age / 60:.0f} min old: torch waits for it to disappear before it loads DeepSpeed's "
                  f"{name} op, so this run may hang here. A process killed while building the op leaves it; "
                  f"if no other process is building it now, remove {lock}", RuntimeWarning, stacklevel=2)
    return lock
