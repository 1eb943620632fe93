"""One writer per place: an exclusive lock on a directory that a process fills.

A run directory, a reference cache being filled and an ``pact eval`` output
directory each have one writer at a time. :class:`DirectoryLock` takes an
advisory ``flock`` on ``DIR/.pact.lock`` and writes the holder into it
(pid, host, start time, command line); a second writer gets
:class:`DirectoryLockedError`, a sentence naming the holder, before it has
touched anything. The kernel drops the lock when the holder exits, however it
exits (a SIGKILL included), so a lock never outlives its process and a
stale ``.pact.lock`` file is simply taken over.

The lock is advisory: it binds pact's own writers. It works across the
processes of one machine and on file systems that implement ``flock``
across hosts (local disks; NFSv4 and Lustre mounted with lock support).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "DirectoryLock", "DirectoryLockedError", "lock_holder"]

LOCK_NAME = ".pact.lock"


class DirectoryLockedError(RuntimeError):
    """Another process holds the directory's lock; the message names it."""


def lock_holder(directory: str | os.PathLike) -> dict | None:
    """What the last holder of ``directory``'s lock wrote (pid, host, started, argv), or None."""
    try:
        return json.loads((Path(directory) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    command = " ".join(holder.get("argv") or [])[:200]
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {started}: {command})"


class DirectoryLock:
    """An exclusive writer lock on ``directory`` (created if missing), as a context manager.

    ``what`` names the place in the refusal, e.g. ``"output_dir=runs/a"``;
    ``hint`` says what to do instead (default: wait, or choose another).
    """

    def __init__(self, directory: str | os.PathLike, what: str, hint: str | None = None):
        self.directory = Path(directory)
        self.what = what
        self.hint = hint or "wait for it to finish, or choose another directory"
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "DirectoryLock":
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DirectoryLockedError(f"{self.what} is being written by {_describe(self._holder())}; "
                                       f"{self.hint}") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _holder(self, wait_s: float = 2.0) -> dict | None:
        """The holder's record; a holder that has just locked writes it right after, so wait up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = lock_holder(self.directory)
            if holder or time.monotonic() >= deadline:
                return holder
            time.sleep(0.02)

    def release(self) -> None:
        """Drop the lock (the file stays: unlinking it would let two writers lock two different files)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()
