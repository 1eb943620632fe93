"""The RUN directories that ``pact report`` reads: their evaluations, training config and per-step log."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .io import read_jsonl

__all__ = ["METHOD_NAMES", "METHOD_ORDER", "Run", "load_runs", "method_name"]

METHOD_NAMES = {
    "initial": "Initial", "sft": "SFT", "constrained_sft": "Constrained SFT", "safelora": "Safe LoRA",
    "safe_lora": "Safe LoRA", "asft": "AsFT", "pact": "PACT", "full_vocab": "Full-vocab KL",
    "full_vocab_kl": "Full-vocab KL",
    "safety_tokens": "+Safety tokens", "safety_weights": "+Safety weights", "response_only_ref": "+Response only ref",
}
METHOD_ORDER = ["Initial", "SFT", "Constrained SFT", "Safe LoRA", "AsFT", "Full-vocab KL", "+Safety tokens",
                "+Safety weights", "+Response only ref", "PACT"]


@dataclass
class Run:
    """What ``pact report`` found in one RUN directory."""

    path: Path
    evals: list[dict] = field(default_factory=list)     # metrics.json contents
    config: dict | None = None                           # run.json contents
    log: list[dict] = field(default_factory=list)        # train_log.jsonl lines
    label: str = ""                                      # legend label, unique among the runs
    table_label: str = ""                                # table row: the method (runs of one method share a row)

    @property
    def method(self) -> str | None:
        for m in self.evals:
            if m.get("method"):
                return m["method"]
        return (self.config or {}).get("method")


def _read_json(p: Path) -> dict | None:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: cannot read JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a JSON object")
    return d


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """Read each RUN directory (or a ``metrics.json`` / ``train_log.jsonl`` file directly)."""
    runs = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            p = p.parent
        if not p.is_dir():
            raise FileNotFoundError(f"run directory not found: {p}")
        run = Run(p)
        found = [p / "metrics.json"] if (p / "metrics.json").is_file() else sorted(p.glob("*/metrics.json"))
        run.evals = [_read_json(f) for f in found]
        if (p / "run.json").is_file():
            run.config = _read_json(p / "run.json")
        else:
            run.config = next((m.get("run_config") for m in run.evals if m.get("run_config")), None)
        if (p / "train_log.jsonl").is_file():
            run.log = read_jsonl(p / "train_log.jsonl")
        if not run.evals and not run.log:
            raise ValueError(f"{p}: no metrics.json (pact eval) and no train_log.jsonl (training run) in it")
        runs.append(run)
    _assign_labels(runs, labels)
    return runs


def method_name(method: str | None) -> str:
    if not method:
        return "?"
    return METHOD_NAMES.get(str(method).lower(), str(method))


def _assign_labels(runs: list[Run], labels: Sequence[str] | None) -> None:
    if labels:
        if len(labels) != len(runs):
            raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
        for r, lab in zip(runs, labels):
            r.label = r.table_label = lab
        return
    names = [method_name(r.method) if r.method else r.path.name for r in runs]
    counts = Counter(names)
    for r, n in zip(runs, names):
        r.table_label = n
        r.label = n if counts[n] == 1 else f"{n} ({r.path.name})"
