"""SHA-256 digests of JSON values and of files' bytes, for the content keys (runs, caches, stages, generations).

Imports nothing but the standard library, so light modules (the experiment's keys, the eval tables) use it
without loading torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["files_digest", "json_digest"]


def json_digest(value, *, sort_keys: bool = True, compact: bool = True, ensure_ascii: bool = True,
                default=str) -> str:
    """SHA-256 of ``value`` as JSON (UTF-8); by default canonical: sorted keys, no spaces, non-ASCII escaped,
    a value JSON cannot write (a path, ...) as its ``str()``.

    Each stored key keeps the form it is made with, so every caller passes the same options each time:
    ``compact=False`` writes ``", "`` and ``": "`` (the experiment's stage keys, generation and verdict
    keys); ``ensure_ascii=False`` writes non-ASCII characters as they are; ``sort_keys=False`` keeps the
    dicts' order; ``default=None`` refuses (TypeError) a value JSON cannot write.
    """
    text = json.dumps(value, sort_keys=sort_keys, separators=(",", ":") if compact else None,
                      ensure_ascii=ensure_ascii, default=default)
    return hashlib.sha256(text.encode()).hexdigest()


def files_digest(root: Path, files) -> str:
    """SHA-256 over ``files`` in the order given: each one's path relative to ``root``, a NUL byte, its bytes."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()
