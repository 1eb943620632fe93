"""Prompts from local CSV / TSV / JSONL / JSON / Parquet files, every row checked (:class:`LocalFileSource`)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from .prompt_source import PromptRecord, PromptSource, PromptSourceError

__all__ = ["FILE_SUFFIXES", "LocalFileSource", "csv_rows", "read_text_file", "text_field"]

FILE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


def read_text_file(path: str | os.PathLike) -> str:
    """A data file's text, decoded as UTF-8; a file in another encoding is a :class:`PromptSourceError` naming
    it and the first byte that is not UTF-8."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptSourceError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}: "
                                f"{e.reason}); save the file as UTF-8") from None


def csv_rows(text: str, *, delimiter: str = ",", where: str) -> list[dict[str, str]]:
    """The rows of a CSV text as dicts (header = keys); malformed CSV is a :class:`PromptSourceError` naming
    ``where``."""
    import io

    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = list(reader)
    except csv.Error as e:
        raise PromptSourceError(f"{where}: malformed CSV: {e}") from e
    return rows


class LocalFileSource(PromptSource):
    """Prompts from a local CSV / TSV / JSONL / JSON / Parquet file.

    ``column`` (default ``prompt``) holds the prompts; ``response_column``
    (default: ``response`` when present) the reference answers. Every row is
    checked: a row without the column, with a null, empty or non-text value
    is an error naming the file and the row (1-based, header not counted).
    ``column_hint`` is the fix a missing column's error suggests (the option
    of the command that reads the file).
    """

    COLUMN_HINT = "name the prompt column with --prompt-column"
    #: Accept answers that are only whitespace (``pact identify`` skips them, as the authors' pipeline does).
    blank_responses = False

    def __init__(self, path: str | os.PathLike, column: str = "prompt", response_column: str | None = None,
                 limit: int | None = None, split: str = "all", column_hint: str | None = None) -> None:
        super().__init__(limit)
        self.path = Path(path)
        self.column, self.response_column = column, response_column
        self.column_hint = column_hint or self.COLUMN_HINT
        self.name, self.split = self.path.name, split
        kind = FILE_SUFFIXES.get(self.path.suffix.lower())
        if kind is None:
            raise PromptSourceError(
                f"{self.path}: unsupported prompt file type {self.path.suffix!r}; "
                f"use one of {sorted(FILE_SUFFIXES)}")
        self.kind = kind

    def _rows(self) -> list[dict[str, Any]]:
        p = self.path
        if not p.is_file():
            raise PromptSourceError(f"prompt file not found: {p} (expected a {self.kind.upper()} file with a "
                                    f"{self.column!r} column)")
        if self.kind in ("csv", "tsv"):
            return csv_rows(read_text_file(p), delimiter="\t" if self.kind == "tsv" else ",", where=str(p))
        if self.kind == "jsonl":
            rows = []
            for i, line in enumerate(read_text_file(p).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptSourceError(f"{p}:{i}: malformed JSON line: {e.msg}") from e
                if not isinstance(row, dict):
                    raise PromptSourceError(f"{p}:{i}: expected a JSON object per line, got {type(row).__name__}")
                rows.append(row)
            return rows
        if self.kind == "json":
            try:
                data = json.loads(read_text_file(p))
            except json.JSONDecodeError as e:
                raise PromptSourceError(f"{p}: malformed JSON: {e}") from e
            if isinstance(data, dict):  # {"prompts": [...]} or {"data": [...]}
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise PromptSourceError(f"{p}: expected a JSON list of objects (or one object holding one)")
                data = lists[0]
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise PromptSourceError(f"{p}: expected a JSON list of objects")
            return data
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover - pyarrow is a dev dependency
            raise PromptSourceError(f"{p}: reading Parquet needs pyarrow (pip install pyarrow)") from e
        try:
            return pq.read_table(p).to_pylist()
        except Exception as e:
            raise PromptSourceError(f"{p}: malformed Parquet file: {e}") from e

    def _load(self) -> list[PromptRecord]:
        rows = self._rows()
        if not rows:
            raise PromptSourceError(f"{self.path}: no rows")
        cols = list(dict.fromkeys(k for row in rows for k in row if k is not None))
        if self.column not in cols:
            raise PromptSourceError(f"{self.path}: no column {self.column!r} (columns: {cols}); {self.column_hint}")
        rc = self.response_column
        if rc is None and "response" in cols:
            rc = "response"
        elif rc is not None and rc not in cols:
            raise PromptSourceError(f"{self.path}: no response column {rc!r} (columns: {cols}); {self.column_hint}")
        out = []
        for i, row in enumerate(rows, 1):
            text = text_field(row, self.column, f"{self.path} row {i}")
            resp = text_field(row, rc, f"{self.path} row {i}", allow_blank=self.blank_responses) if rc else None
            meta = {k: v for k, v in row.items() if k not in (self.column, rc) and k is not None}
            out.append(PromptRecord(text, response=resp, meta=meta))
        return out


def text_field(row: dict, key: str, where: str, allow_blank: bool = False) -> str:
    """``row[key]`` when it is non-empty text (``allow_blank``: or only whitespace); else a
    :class:`PromptSourceError` that names ``where`` (file and row) and says what is wrong: no such field, null (an
    empty cell), another type, or only whitespace."""
    if key not in row:
        raise PromptSourceError(f"{where} has no {key!r} field (its fields: {sorted(k for k in row if k is not None)})")
    value = row[key]
    if value is None:
        raise PromptSourceError(f"{where} has a null {key!r} (an empty or missing cell); fill it or drop the row")
    if not isinstance(value, str):
        raise PromptSourceError(f"{where} has a non-text {key!r}: {type(value).__name__} {value!r}; write it as "
                                "text (in quotes in JSON)")
    if not value.strip() and not allow_blank:
        raise PromptSourceError(f"{where} has an empty or non-text {key!r}")
    return value
