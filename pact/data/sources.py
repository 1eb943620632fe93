"""Prompt sources behind one interface (see :mod:`pact.data`): the registry of named sources and :func:`get_source`.

Every source is a :class:`PromptSource` (:mod:`pact.data.prompt_source`): it
has a ``name``, a ``split`` and, once loaded, a ``size``; its ``records`` are
:class:`PromptRecord` (a prompt, and where the data set has them a reference
``response`` such as a refusal and a ``target`` such as a compliant answer).
Records load lazily, once. The backings: installed data packages
(:mod:`pact.data.package_sources`), the Hugging Face Hub
(:mod:`pact.data.hub_sources`) and local files (:mod:`pact.data.local_files`).
"""
from __future__ import annotations

import os
from pathlib import Path

from .hub_sources import HUB_SOURCES, HubSource
from .local_files import FILE_SUFFIXES, LocalFileSource, read_text_file, text_field
from .package_sources import PACKAGE_SOURCES, PackageSource, package_file
from .prompt_source import (
    DataPackageMissingError,
    ListSource,
    PromptRecord,
    PromptSource,
    PromptSourceError,
    SourceUnavailableError,
)

__all__ = [
    "HUB_SOURCES",
    "PACKAGE_SOURCES",
    "DataPackageMissingError",
    "HubSource",
    "ListSource",
    "LocalFileSource",
    "PackageSource",
    "PromptRecord",
    "PromptSource",
    "PromptSourceError",
    "SourceUnavailableError",
    "available_sources",
    "get_source",
    "package_file",
    "read_text_file",
    "text_field",
]


def available_sources() -> dict[str, str]:
    """Name -> one-line description of every named source."""
    d = {k: f"{v.description} [package {v.pip}; splits {', '.join(v.splits)}]" for k, v in PACKAGE_SOURCES.items()}
    d.update({k: f"{v.description} [hub {v.repo}]" for k, v in HUB_SOURCES.items()})
    return d


def get_source(spec: str | os.PathLike | PromptSource, *, column: str = "prompt",
               response_column: str | None = None, limit: int | None = None,
               column_hint: str | None = None) -> PromptSource:
    """Resolve ``spec`` to a :class:`PromptSource`.

    ``spec`` is a registered name with an optional split (``harmbench``,
    ``strongreject:small``, ``jbb``) or the path of a local file. A path that
    looks like a file (has a known suffix or exists) always wins.
    ``column_hint``: the fix a local file's missing column suggests (see
    :class:`LocalFileSource`).
    """
    if isinstance(spec, PromptSource):
        if limit is not None:
            spec.limit = limit
            spec._records = None
        return spec
    s = os.fspath(spec)
    if Path(s).suffix.lower() in FILE_SUFFIXES or Path(s).exists() or os.sep in s:
        return LocalFileSource(s, column=column, response_column=response_column, limit=limit,
                               column_hint=column_hint)
    name, _, split = s.partition(":")
    name = name.strip().lower()
    if name in PACKAGE_SOURCES:
        return PackageSource(name, split or None, limit=limit)
    if name in HUB_SOURCES:
        return HubSource(name, split or None, limit=limit)
    raise PromptSourceError(
        f"unknown prompt source {s!r}: not a file with a suffix in {sorted(FILE_SUFFIXES)} and not one of "
        f"{sorted(PACKAGE_SOURCES) + sorted(HUB_SOURCES)}")
