"""How this process was started: one process or a rank of a launcher, checked before any collective.

A plain ``pact train`` (or ``python pact/train.py`` without a launcher) is
one process. ``RANK`` / ``WORLD_SIZE`` left in its environment (a shell of a
distributed job, an exported variable) would make it wait for ranks that
never come; :func:`check_launch_environment` refuses that with a sentence.
Under a launcher (``deepspeed``: ``--local_rank``; ``torchrun``:
``LOCAL_RANK`` with ``TORCHELASTIC_RUN_ID``) the variables are the launcher's.
"""
from __future__ import annotations

import os

from .config import ConfigError

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched(local_rank_arg: int) -> bool:
    """True when a launcher started this process (the deepspeed launcher's ``--local_rank``, or torchrun)."""
    return local_rank_arg >= 0 or "TORCHELASTIC_RUN_ID" in os.environ


def check_launch_environment(single_process: bool, local_rank_arg: int = -1) -> None:
    """Refuse distributed variables in the environment of a process no launcher started.

    ``single_process``: the caller runs one process whatever the
    environment says (``pact train``). ``RANK=0``, ``WORLD_SIZE=1`` is one
    process and accepted.
    """
    if not single_process and launched(local_rank_arg):
        return
    found = {k: os.environ[k] for k in DIST_VARS if k in os.environ}
    if os.environ.get("RANK", "0") == "0" and os.environ.get("WORLD_SIZE", "1") == "1":
        return
    listed = " ".join(f"{k}={v}" for k, v in found.items())
    how = "`pact train` runs one process" if single_process else "no launcher started this process"
    raise ConfigError(f"the environment sets {listed}, but {how}: it would wait for ranks that never start. "
                      f"Unset them (env -u {' -u '.join(found)} ...), or start the ranks with the launcher: "
                      "deepspeed --num_gpus N pact/train.py ...")


#: Words in the errors of torch.distributed's backends (gloo, NCCL) and its store.
DIST_WORDS = ("gloo", "nccl", "c10d", "processgroup", "tcpstore", "clients joined")
PEER_GONE = ("connection closed by peer", "connection reset by peer", "remote worker crashing", "broken pipe")


def describe_collective_failure(error: BaseException, timeout_s: int) -> str | None:
    """A sentence for a collective that timed out or lost a rank (``error`` from torch.distributed), else None."""
    import torch.distributed as dist

    text = str(error)
    if not (isinstance(error, getattr(dist, "DistError", ())) or any(w in text.lower() for w in DIST_WORDS)):
        return None  # not from a collective (e.g. a model download that timed out): its own traceback stays
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if any(w in text.lower() for w in PEER_GONE):
        return ("another rank stopped while this one waited for it in a collective (interrupted, or failed: its "
                f"own message says why; {first[:200]})")
    if "timed out" not in text.lower() and "timeout" not in text.lower():
        return None
    return (f"a collective waited more than collective_timeout={timeout_s} s for the other ranks: one of them "
            f"stopped or froze ({first[:300]}). Its own output names why; raise collective_timeout if a step, the reference "
            "cache fill or a checkpoint write (rank 0 hashes every file) legitimately takes that long")
