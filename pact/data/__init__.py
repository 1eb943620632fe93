"""Prompt sources: harmful prompts for identification, intervention and evaluation.

One interface for every source (:class:`PromptSource`: ``name``, ``split``,
``size``, ``records``), three kinds of backing:

* installed data packages, read offline with :mod:`importlib.resources`
  (``harmbench``, ``strongreject``, ``advbench``, ``uncensorbench``);
* the Hugging Face Hub, when it is reachable (``advbench-targets``, ``jbb``,
  ``wildjailbreak``, ``beavertails``); offline they fail with a message that
  names the local file to pass instead;
* any local CSV / TSV / JSONL / JSON / Parquet file (column ``prompt`` unless
  another is named).

    from pact.data import get_source
    src = get_source("harmbench")          # 200 standard behaviours
    src = get_source("strongreject:small") # name:split
    src = get_source("my_prompts.jsonl", column="text")
"""
from .sources import (
    HUB_SOURCES,
    PACKAGE_SOURCES,
    DataPackageMissingError,
    HubSource,
    ListSource,
    LocalFileSource,
    PackageSource,
    PromptRecord,
    PromptSource,
    PromptSourceError,
    SourceUnavailableError,
    available_sources,
    get_source,
    package_file,
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
]
