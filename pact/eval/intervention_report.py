"""``pact intervention-report``: the paper's Table 1 from ``pact intervene`` outputs.

Input: the JSONL files that ``pact intervene`` wrote (each line carries
``mode`` = none / boost / ablate and ``control`` = safety / random), given as
files or directories (every ``*.jsonl`` in them). Each file is judged
(verdicts cached in ``OUT/verdicts/<file name>``, so a re-run or another
report reuses them) and its ASR, with its count and 95 % Wilson interval,
goes into one cell:

====================================  ===========  ============
Setting                               Safety Token Random Token
====================================  ===========  ============
Baseline (no intervention)            none         none
Boost (logits ← logits + α)           boost/safety boost/random
Ablate (logits ← −1e9)                ablate/safety ablate/random
====================================  ===========  ============

A ``none`` run fills both baseline cells (the set plays no role without an
intervention) unless both a safety and a random ``none`` file are given.
Files over different prompt sets are reported, since their ASRs do not compare.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from .io import read_jsonl, write_json_atomic, write_text_atomic
from .judges import Judge, get_judge
from .metrics import RATE_CSV_PARTS, Rate, harmful_summary, rate_csv_fields
from .verdicts import judge_records

__all__ = ["intervention_report", "intervention_table"]

ROWS = (("none", "Baseline (no intervention)"), ("boost", "Boost (logits ← logits + α)"),
        ("ablate", "Ablate (logits ← −1e9)"))
COLS = (("safety", "Safety Token"), ("random", "Random Token"))


def _files(paths: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.glob("*.jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or directory: {p}")
    if not out:
        raise ValueError("no pact intervene outputs (*.jsonl) found")
    return out


def _key(recs: list[dict], path: Path) -> tuple[str, str]:
    modes = {r.get("mode") for r in recs}
    controls = {r.get("control") for r in recs}
    if len(modes) != 1 or len(controls) != 1:
        raise ValueError(f"{path}: mixes modes {sorted(map(str, modes))} / sets {sorted(map(str, controls))}; "
                         "one pact intervene output per file")
    mode, control = modes.pop(), controls.pop()
    if mode not in ("none", "boost", "ablate") or control not in ("safety", "random"):
        raise ValueError(f"{path}: lines lack pact intervene's mode/control fields (got {mode!r}, {control!r})")
    return mode, control


def intervention_table(cells: dict[tuple[str, str], dict]) -> tuple[str, str]:
    """(markdown, CSV) of Table 1 from ``{(mode, control): harmful_summary(...)}``.

    Each cell is the ASR in percent with its 95 % Wilson interval (``50.0 [15.0–85.0]``); the CSV has,
    per token set, the ASR, ``ci_lo``, ``ci_hi``, ``k`` (unsafe) and ``n`` apart, like ``pact report``'s.
    """
    def get(mode, control):
        c = cells.get((mode, control))
        if c is None and mode == "none":
            c = cells.get(("none", "random" if control == "safety" else "safety"))
        return c

    md = ["| Setting | Safety Token ASR (%) | Random Token ASR (%) |", "|---|---:|---:|"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["setting"] + [f"{name} ASR{part}" for _, name in COLS for part in RATE_CSV_PARTS])
    for mode, name in ROWS:
        rates = [None if v is None else Rate.from_summary({"kind": "harmful", **v}) for v in
                 (get(mode, c) for c, _ in COLS)]
        md.append(f"| {name} | " + " | ".join("–" if r is None else str(r) for r in rates) + " |")
        w.writerow([mode] + [x for r in rates for x in rate_csv_fields(r)])
    return "\n".join(md) + "\n", buf.getvalue()


def intervention_report(paths: Sequence[str | Path], out_dir: str | Path, judge: Judge | str = "keyword", *,
                        judge_options: dict | None = None, progress: bool = True, batch_size: int = 16) -> dict:
    """Judge every intervene output, write ``table.md``, ``table.csv`` and ``intervention.json`` to ``out_dir``."""
    out = Path(out_dir)
    (out / "verdicts").mkdir(parents=True, exist_ok=True)
    j = judge if isinstance(judge, Judge) else get_judge(judge, progress=progress, **(judge_options or {}))
    cells: dict[tuple[str, str], dict] = {}
    prompt_sets: dict[tuple[str, str], tuple[str, ...]] = {}
    try:
        for f in _files(paths):
            recs = read_jsonl(f, tolerate_partial_tail=False)
            if not recs:
                raise ValueError(f"{f}: empty")
            key = _key(recs, f)
            if key in cells:
                raise ValueError(f"{f}: a second file for mode={key[0]}, set={key[1]} ({cells[key]['file']})")
            judged = judge_records(recs, j, out_path=out / "verdicts" / f.name, batch_size=batch_size,
                                   progress=progress, desc=f"judge {f.name}")
            cells[key] = {**harmful_summary(judged), "file": str(f), "alpha": recs[0].get("alpha"),
                          "token_set_size": recs[0].get("token_set_size"), "source": recs[0].get("source")}
            prompt_sets[key] = tuple(r["prompt"] for r in recs)
    finally:
        j.close()
    same = len(set(prompt_sets.values())) <= 1
    md, csv_text = intervention_table(cells)
    if not same:
        md += "\nNote: the files do not share one prompt set; their ASRs are not comparable.\n"
    write_text_atomic(out / "table.md", md)
    write_text_atomic(out / "table.csv", csv_text)
    summary = {"judge": j.label, "same_prompts": same,
               "cells": {f"{m}/{c}": v for (m, c), v in sorted(cells.items())}}
    write_json_atomic(out / "intervention.json", summary)
    return {**summary, "markdown": md}
