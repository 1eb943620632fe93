"""Small file helpers for the evaluation harness: JSONL that survives interruption, atomic JSON.

* :func:`read_jsonl` reads one JSON object per line; a last line cut short
  by an interrupted write (no newline, not valid JSON) is dropped, any other
  malformed line is an error naming the file and line.
* :func:`write_json_atomic` / :func:`write_jsonl_atomic` /
  :func:`write_text_atomic` (from :mod:`pact.atomic_files`) write a temporary
  file in the same directory and :func:`os.replace` it over the target, so a
  reader never sees half a file.
* :class:`JsonlAppender` appends records one per line and flushes after each
  batch, which is what makes an interrupted run resumable.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..atomic_files import write_json_atomic, write_jsonl_atomic, write_text_atomic

__all__ = ["JsonlAppender", "read_jsonl", "write_json_atomic", "write_jsonl_atomic", "write_text_atomic"]


def read_jsonl(path: str | os.PathLike, *, tolerate_partial_tail: bool = True) -> list[dict[str, Any]]:
    """Records of a JSONL file (``[]`` when it does not exist).

    A last line without its newline that does not parse is the trace of an
    interrupted write and is dropped when ``tolerate_partial_tail``.
    """
    p = Path(path)
    if not p.exists():
        return []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the file "
                         "as UTF-8") from None
    lines = text.split("\n")
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if tolerate_partial_tail and i == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{p}:{i}: malformed JSON line ({e.msg})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{p}:{i}: expected a JSON object per line, got {type(rec).__name__}")
        out.append(rec)
    return out


class JsonlAppender:
    """Append JSON records to a file, one per line, flushed and fsynced on :meth:`flush`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
