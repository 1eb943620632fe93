"""Prompt sources on the Hugging Face Hub, loaded with ``datasets`` when the hub is reachable; offline, the error
names the file to download and pass instead."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .prompt_source import PromptRecord, PromptSource, PromptSourceError, SourceUnavailableError

__all__ = ["HUB_SOURCES", "HubSource"]


@dataclass(frozen=True)
class _HubSpec:
    repo: str
    config: str | None
    split: str
    column: str
    local_hint: str              # which file to download and pass instead
    local_column: str
    target_column: str | None = None
    filter: Callable[[dict], bool] | None = None
    dedupe: bool = False
    load_kwargs: tuple = ()
    description: str = ""


HUB_SOURCES: dict[str, _HubSpec] = {
    "advbench-targets": _HubSpec(
        "walledai/AdvBench", None, "train", "prompt",
        "data/train-00000-of-00001.parquet of https://huggingface.co/datasets/walledai/AdvBench "
        "(or harmful_behaviors.csv of github.com/llm-attacks/llm-attacks, column goal)",
        "prompt", target_column="target",
        description="AdvBench 520 goals with their 'Sure, here is ...' targets"),
    "jbb": _HubSpec(
        "JailbreakBench/JBB-Behaviors", "behaviors", "harmful", "Goal",
        "data/harmful-behaviors.csv of https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors",
        "Goal", target_column="Target",
        description="JailbreakBench JBB-Behaviors, 100 harmful behaviours"),
    "wildjailbreak": _HubSpec(
        "allenai/wildjailbreak", "train", "train", "vanilla",
        "train/train.tsv of https://huggingface.co/datasets/allenai/wildjailbreak (gated; "
        "keep the rows with data_type == vanilla_harmful)",
        "vanilla", target_column="completion",
        filter=lambda r: r.get("data_type") == "vanilla_harmful",
        load_kwargs=(("delimiter", "\t"), ("keep_default_na", False)),
        description="WildJailbreak vanilla harmful prompts (the paper's identification set)"),
    "beavertails": _HubSpec(
        "PKU-Alignment/BeaverTails", None, "30k_test", "prompt",
        "the 30k_test split of https://huggingface.co/datasets/PKU-Alignment/BeaverTails, "
        "exported as JSONL with the unsafe rows (is_safe == false)",
        "prompt", target_column="response", filter=lambda r: r.get("is_safe") is False, dedupe=True,
        description="BeaverTails prompts whose answer was labelled unsafe (deduplicated; the unsafe answer "
                    "is the target)"),
    "xstest": _HubSpec(
        "walledai/XSTest", None, "test", "prompt",
        "data/test-00000-of-00001.parquet of https://huggingface.co/datasets/walledai/XSTest (keep the rows with "
        "label == safe)",
        "prompt", filter=lambda r: str(r.get("label", "")).lower() == "safe",
        description="XSTest's 250 safe prompts that look unsafe (over-refusal)"),
}


class HubSource(PromptSource):
    """A source loaded with ``datasets.load_dataset`` from the Hugging Face Hub."""

    def __init__(self, name: str, split: str | None = None, limit: int | None = None) -> None:
        super().__init__(limit)
        if name not in HUB_SOURCES:
            raise PromptSourceError(f"unknown hub source {name!r}; known: {sorted(HUB_SOURCES)}")
        self.name, self._spec = name, HUB_SOURCES[name]
        self.split = split or self._spec.split

    def _unavailable(self, why: str) -> SourceUnavailableError:
        s = self._spec
        return SourceUnavailableError(
            f"cannot load {self.name!r} ({s.repo}, split {self.split!r}) from the Hugging Face Hub: {why}. "
            f"Offline, download {s.local_hint} where the hub is reachable and pass the local file: "
            f"--prompts /path/to/{Path(s.local_hint.split()[0]).name} --prompt-column {s.local_column}"
        )

    def _load(self) -> list[PromptRecord]:
        s = self._spec
        try:
            import datasets  # noqa: F401
        except ImportError as e:
            raise self._unavailable("the 'datasets' package is not installed (pip install datasets)") from e
        try:
            ds = datasets.load_dataset(s.repo, s.config, split=self.split, **dict(s.load_kwargs))
        except Exception as e:  # ConnectionError, gated repo, offline mode ...
            raise self._unavailable(f"{type(e).__name__}: {e}") from e
        out, seen = [], set()
        for row in ds:
            if s.filter is not None and not s.filter(row):
                continue
            text = row.get(s.column)
            if not text or (s.dedupe and text in seen):
                continue
            seen.add(text)
            out.append(PromptRecord(text, target=row.get(s.target_column) if s.target_column else None))
        return out
