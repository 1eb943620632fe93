"""Files written whole or not at all.

Every file pact writes that a later step reads (run records, checkpoint
manifests, ``latest``, metrics, safety-token sets, reports, generations)
goes through :func:`write_text_atomic`: the text is written to a temporary
file with a unique name in the target's folder, flushed and fsynced, then
:func:`os.replace` d over the target. A reader (or a resumed run) sees the
old file or the new one, never half of one; a write that fails (a full disk,
an unencodable character, an interrupt) leaves the old file as it was and no
temporary file behind. The new file gets the ordinary permissions
(``0o666`` less the umask), not the ``0o600`` of :func:`tempfile.mkstemp`.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable

__all__ = ["write_json_atomic", "write_jsonl_atomic", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; create the parent folder; return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` as JSON (non-ASCII kept, a final newline), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=True) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line, written atomically."""
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
