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
from . import sources
from .sources import *  # noqa: F403 -- the names of sources.__all__

__all__ = list(sources.__all__)
