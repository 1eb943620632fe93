"""The results table of ``pact report`` (Table 2 layout) and the check that its rows were measured alike.

One row per method (runs of one method on different tasks share the row; two
runs of one method on one task get a row each, named after their
directories), one column group per fine-tuning task, each group
``Acc↑ SR↓ JB↓ HB↓ OR↓`` in percent, plus a ``Deg`` column when a judge
counted degenerate answers (see :mod:`pact.eval.report`).
"""
from __future__ import annotations

import csv
import io
from typing import Sequence

from ..digests import json_digest
from .metrics import RATE_CSV_PARTS, Rate, rate_csv_fields
from .runs import METHOD_ORDER, Run

__all__ = ["ARROWS", "COLUMNS", "DEG", "TASK_NAMES", "TASK_ORDER", "MixedSettingsError", "cells_of_metrics",
           "check_comparable", "render_table", "table_rows"]

TASK_NAMES = {"gsm8k": "GSM8K", "sst2": "SST2", "agnews": "AGNEWS", "bbq": "BBQ"}
TASK_ORDER = ["gsm8k", "sst2", "agnews", "bbq"]
COLUMNS = ("Acc", "SR", "JB", "HB", "OR")
#: Degenerate answers to the harmful prompts (all harmful suites of a run pooled), shown when a judge assessed them.
DEG = "Deg"
ARROWS = {"Acc": "↑", "SR": "↓", "JB": "↓", "HB": "↓", "OR": "↓", DEG: ""}


def cells_of_metrics(m: dict) -> tuple[list[str], dict[str, dict[str, Rate | None]]]:
    """(tasks, {task: {column: rate}}) of one metrics.json."""
    suites = m.get("suites", {})
    shared = {v["column"]: Rate.from_summary(v) for v in suites.values()
              if v.get("kind") in ("harmful", "overrefusal") and v.get("column") in COLUMNS}
    deg = Rate.degenerate_of([v for v in suites.values() if v.get("kind") == "harmful"])
    task_suites = [k for k, v in suites.items() if v.get("kind") == "task"]
    task = m.get("task") or (m.get("run_config") or {}).get("task")
    tasks = [task] if task else (task_suites or ["-"])
    out = {}
    for t in tasks:
        acc = Rate.from_summary(suites[t]) if t in suites else None
        out[t] = {"Acc": acc, **{c: shared.get(c) for c in COLUMNS[1:]}, DEG: deg}
    return tasks, out


def table_rows(runs: Sequence[Run]) -> tuple[list[str], list[tuple[str, dict[str, dict[str, Rate | None]]]]]:
    """(task order, [(row label, {task: {column: rate}})]) for the evaluated runs, in the paper's method order."""
    tasks, rows, _ = _table(runs)
    return tasks, rows


def _table(runs: Sequence[Run]):
    """:func:`table_rows` plus ``{row label: [(task, metrics.json dict)]}``: which evals fill each row."""
    rows: dict[str, dict[str, dict]] = {}
    origin: dict[str, str] = {}
    sources: dict[str, list[tuple[str, dict]]] = {}
    all_tasks: list[str] = []
    for r in runs:
        for m in r.evals:
            tasks, cells = cells_of_metrics(m)
            label = r.table_label if len(r.evals) == 1 else f"{r.table_label} [{m.get('name', '')}]"
            for t in tasks:
                if t not in all_tasks:
                    all_tasks.append(t)
                row = rows.setdefault(label, {})
                if t in row:  # two runs claim one cell: keep both rows apart
                    label2 = f"{label} ({r.path.name})"
                    rows.setdefault(label2, {})[t] = cells[t]
                    origin.setdefault(label2, str(r.path))
                    sources.setdefault(label2, []).append((t, m))
                else:
                    row[t] = cells[t]
                    origin.setdefault(label, str(r.path))
                    sources.setdefault(label, []).append((t, m))
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    labels = sorted(rows, key=lambda lab: (order.get(lab.split(" (")[0].split(" [")[0], len(order)), list(rows).index(lab)))
    tasks = sorted(all_tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER),
                                             all_tasks.index(t)))
    return tasks, [(lab, rows[lab]) for lab in labels], sources


class MixedSettingsError(ValueError):
    """Rows of one table were measured with different judges, token budgets or suites."""


def _short(digest: str | None) -> str:
    return (digest or "")[:8]


def _judge_value(m: dict, suite: dict) -> str | None:
    """The judge that decided a column's verdicts: its label, plus a settings digest when it has settings."""
    settings = suite.get("judge_settings") or (m.get("judge_settings") if suite.get("kind") == "harmful" else None)
    label = suite.get("judge") or (m.get("judge") if suite.get("kind") == "harmful" else None)
    if settings:
        digest = json_digest(settings, compact=False, default=None)
        return f"{settings.get('label', label)} [settings {_short(digest)}]"
    return label


def _measured_with(task: str, m: dict) -> dict[str, str]:
    """What a row's numbers depend on beyond the model: {dimension: value} of one metrics.json in task group
    ``task`` (the judge of each judged column, the token budget, each column's suite and prompts)."""
    out: dict[str, str] = {}
    suites = m.get("suites", {})
    if m.get("max_new_tokens") is not None:
        out["max_new_tokens"] = str(m["max_new_tokens"])
    for name, v in suites.items():
        col = v.get("column")
        if col not in COLUMNS or (v.get("kind") == "task" and name != task):
            continue
        where = f"{_task_prefix(task)}{col}" if col == "Acc" else col
        digest = v.get("prompts_sha256")
        out[f"suite {where}"] = f"{v.get('suite', name)} n={v.get('n')}" + (f" [prompts {_short(digest)}]"
                                                                             if digest else "")
        judge = _judge_value(m, v) if v.get("kind") in ("harmful", "overrefusal") else None
        if judge:
            out[f"judge {where}"] = judge
    return out


def _differences(sources: dict[str, list[tuple[str, dict]]]) -> list[str]:
    """One sentence per dimension on which the rows differ: ``judge HB: keyword (SFT, PACT); llama-guard:x
    (Initial)``. A dimension compares the rows that have it; a suite column compares prompts digests when
    every row has one, else the suite and n."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for label, evals in sources.items():
        for task, m in evals:
            for dim, value in _measured_with(task, m).items():
                seen.setdefault(dim, []).append((value, label))
    out = []
    for dim, pairs in seen.items():
        if dim.startswith("suite ") and any(" [prompts " not in v for v, _ in pairs):
            pairs = [(v.split(" [prompts ")[0], lab) for v, lab in pairs]
        by_value: dict[str, list[str]] = {}
        for v, lab in pairs:
            rows = by_value.setdefault(v, [])
            if lab not in rows:
                rows.append(lab)
        if len(by_value) > 1:
            out.append(f"{dim}: " + "; ".join(f"{v} ({', '.join(rows)})" for v, rows in by_value.items()))
    return out


def check_comparable(runs: Sequence[Run], allow_mixed: bool = False) -> list[str]:
    """The differences between the table's rows (:func:`_differences`); raises :class:`MixedSettingsError`
    naming them unless ``allow_mixed``, which returns them for the footnote."""
    _, _, sources = _table(runs)
    diffs = _differences(sources)
    if diffs and not allow_mixed:
        raise MixedSettingsError(
            "the rows were not measured alike, so one table would compare unlike numbers: " + " | ".join(diffs)
            + ". Evaluate them with the same judge, --max-new-tokens and suites, or pass --allow-mixed to put "
            "them in one table with these differences in a footnote")
    return diffs


def _task_prefix(task: str) -> str:
    """Column-group prefix: ``GSM8K `` etc.; none for runs without a task (no Acc)."""
    return "" if task == "-" else f"{TASK_NAMES.get(task, task)} "


def render_table(runs: Sequence[Run], footnotes: Sequence[str] = ()) -> tuple[str, str]:
    """(markdown, CSV) of the results table.

    A markdown cell is ``rate [lo–hi]`` (percent, 95 % Wilson interval, one
    decimal); the items behind a column (n) go in the line under the table
    when every row of the column has the same n, else into each of its cells
    as ``(k/n)``. The CSV has, per column, the rate, ``ci_lo``, ``ci_hi``,
    ``k`` (hits) and ``n`` (items) apart. ``footnotes``: differences between
    the rows' settings (:func:`check_comparable` with ``allow_mixed``), listed
    under the table.
    """
    tasks, rows = table_rows(runs)
    if not rows:
        return "", ""
    assessed = any(cells.get(t, {}).get(DEG) is not None for _, cells in rows for t in tasks)
    keys = [(t, c) for t in tasks for c in COLUMNS + ((DEG,) if assessed else ())]
    names = [f"{_task_prefix(t)}{c}" for t, c in keys]
    ns = {key: {cells.get(key[0], {}).get(key[1]).n for _, cells in rows if cells.get(key[0], {}).get(key[1])}
          for key in keys}
    head = ["Method"] + [f"{name}{ARROWS[c]}" for name, (_, c) in zip(names, keys)]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + [f"{name}{part}" for name in names for part in RATE_CSV_PARTS])
    for label, cells in rows:
        vals = [cells.get(t, {}).get(c) for t, c in keys]
        shown = []
        for key, v in zip(keys, vals):
            txt = "–" if v is None else str(v)
            if v is not None and v.n is not None and len(ns[key]) > 1:
                txt += f" ({v.k}/{v.n})"
            shown.append(txt)
        md.append("| " + " | ".join([label] + shown) + " |")
        w.writerow([label] + [x for v in vals for x in rate_csv_fields(v)])
    uniform = [f"{name} {next(iter(ns[key]))}" for name, key in zip(names, keys) if len(ns[key]) == 1]
    note = "\nCells: rate in % [95 % Wilson interval]"
    if assessed:
        note += "; Deg: degenerate answers to the harmful prompts (SR, JB, HB pooled), neither refusal nor attack"
    if uniform:
        note += "; items per cell (n): " + ", ".join(uniform)
    note += "."
    if footnotes:
        note += "\nMixed settings (--allow-mixed), not comparable across these rows: " + "; ".join(
            f"({i}) {d}" for i, d in enumerate(footnotes, 1)) + "."
    return "\n".join(md) + "\n" + note + "\n", buf.getvalue()
