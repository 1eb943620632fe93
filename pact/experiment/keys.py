"""What a stage of ``pact experiment`` is keyed by: SHA-256 of canonical JSON and of files' bytes, cached per run.

A finished stage's directory holds ``done.json`` with its key; a stage that
has started holds ``started.json`` (see :mod:`pact.experiment.run`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..digests import files_digest, json_digest

__all__ = ["DONE", "STARTED", "ContentDigests", "digest", "file_digest", "read_json"]

DONE = "done.json"
STARTED = "started.json"


def digest(obj) -> str:
    """A stage key: SHA-256 of ``obj`` as JSON with sorted keys and ``", "``/``": "`` separators
    (:func:`pact.fingerprint.json_digest` with ``compact=False``)."""
    return json_digest(obj, compact=False)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's name and bytes, or of a directory's files (relative names and bytes, sorted)."""
    p = Path(path)
    if p.is_file():
        return files_digest(p.parent, [p])
    return files_digest(p, sorted(f for f in p.rglob("*") if f.is_file()))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


class ContentDigests:
    """The content digests of models and files, each computed once per run (:meth:`forget` drops those under a
    path that was just rewritten)."""

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}

    def model_digest(self, name: str | None, gguf: str | None = None) -> str | None:
        """The weights digest of a model (:func:`pact.fingerprint.weights_digest`); None without a model."""
        if not name:
            return None
        k = f"{name}|{gguf}"
        if k not in self._digests:
            from ..fingerprint import weights_digest

            self._digests[k] = weights_digest(name, gguf)
        return self._digests[k]

    def path_digest(self, path: str | Path) -> str:
        """The :func:`file_digest` of a file or directory."""
        k = f"file|{Path(path).resolve()}"
        if k not in self._digests:
            self._digests[k] = file_digest(path)
        return self._digests[k]

    def forget(self, path: str | Path) -> None:
        """Drop cached digests under ``path`` (it was just rewritten)."""
        p = str(Path(path).resolve())
        self._digests = {k: v for k, v in self._digests.items() if p not in k}
