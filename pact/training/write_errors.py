"""Write failures as sentences: what could not be written, why (disk full, read-only, file-size limit), what is kept.

``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at
inline_container.cc:...]``; :func:`writing` turns that (and any ``OSError``)
into a :class:`WriteFailedError` that names the path, the cause found on the
file system, and the last intact checkpoint, which a ``--resume`` starts
from once the cause is fixed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
from pathlib import Path
from typing import Callable

#: Free bytes below which a failed write is put down to a full disk.
FULL_BELOW = 64 << 20
#: Words of torch's / the OS's messages for a failed write (RuntimeError has no errno).
WRITE_WORDS = ("inline_container", "file write failed", "no space left", "read-only file system",
               "file too large", "permission denied", "unexpected pos")


class WriteFailedError(RuntimeError):
    """A file of the run could not be written; the message says where, why and what was kept."""


def _errno(error: BaseException | None) -> int | None:
    while error is not None:
        if getattr(error, "errno", None):
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def _existing(path: Path) -> Path:
    return next((p for p in [path, *path.parents] if p.exists()), Path("/"))


def cause_of_write_failure(error: BaseException, path: str | os.PathLike) -> str:
    """The reason a write under ``path`` failed, from the error's errno and the file system's state."""
    where = _existing(Path(path))
    code = _errno(error)
    text = str(error).lower()
    try:
        st = os.statvfs(where)
        free, read_only = st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY)
    except OSError:
        free, read_only = None, False
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if code == errno.ENOSPC or "no space left" in text or (free is not None and free < FULL_BELOW):
        return f"the disk holding {where} is full ({free if free is not None else '?'} bytes free)"
    if code == errno.EROFS or read_only or "read-only" in text:
        return f"{where} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM) or not os.access(where, os.W_OK):
        return f"{where} is read-only for this user (permission denied)"
    if code == errno.EFBIG or "file too large" in text or limit != resource.RLIM_INFINITY:
        return (f"a file-size limit of {limit} bytes (ulimit -f) stops files from growing past it"
                if limit != resource.RLIM_INFINITY else "a file grew past the file system's size limit")
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def is_write_failure(error: BaseException) -> bool:
    """True for an OSError, or a RuntimeError whose text is torch's word for a failed write."""
    if isinstance(error, OSError):
        return True
    return isinstance(error, RuntimeError) and any(w in str(error).lower() for w in WRITE_WORDS)


@contextlib.contextmanager
def writing(what: str, path: str | os.PathLike, kept: Callable[[], str], partial: str | os.PathLike | None = None):
    """Turn a failed write of ``what`` at ``path`` into a :class:`WriteFailedError` naming the cause and what is kept.

    ``kept()``: what survives, in words (called only on a failure).
    ``partial``: a temporary file or directory of the failed write, removed
    (it is never read; removing it gives the space back).
    """
    try:
        yield
    except BaseException as e:
        if not is_write_failure(e) or isinstance(e, WriteFailedError):
            raise
        cause = cause_of_write_failure(e, path)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True) if Path(partial).is_dir() else Path(partial).unlink(missing_ok=True)
        raise WriteFailedError(f"could not write {what} at {path}: {cause}. Kept: {kept()}. Fix that and continue "
                               "with --resume") from e
