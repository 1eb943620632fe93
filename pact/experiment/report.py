"""The report of a grid in the paper's layout: Table 2, Table 5, Fig. 5 (markdown, CSV, PNG) in ``OUT/5-report``.

* **Table 2** (``table2.md`` / ``.csv``): the untrained models (M_base, M_safe)
  and every method (SFT, Constrained SFT, Safe LoRA, AsFT, PACT; a baseline
  run with its authors' recipe is its own row) at the grid's default λ / N /
  K; columns: the task's accuracy, over-refusal, the ASR of each harmful
  suite and their pooled ASR (``ASR avg``: all harmful prompts together, so
  its interval is the pooled count's).
* **Table 5** (``table5.md`` / ``.csv``): the ablation ladder (Full-vocab
  KL, +Safety tokens, +Safety weights, +Response only ref, PACT), same columns.
* **Fig. 5** (``fig5_sweep.png``, ``fig5.csv``): the pooled ASR and the task
  accuracy of PACT against λ, N and K (each with the other two at their
  defaults), with error bars.

A cell of one seed is its rate with the 95 % Wilson interval, ``5.0
[1.4–16.5]``; a cell of several seeds is the mean and range of the seeds'
rates, ``48.3 (45.0–52.5)`` (the CSV holds every seed's count and interval).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import OrderedDict
from pathlib import Path

from ..atomic_files import write_json_atomic, write_text_atomic
from ..eval.metrics import Rate
from ..eval.report import METHOD_NAMES, TASK_NAMES
from .grid import BASELINE_METHODS, LADDER

__all__ = ["cell_stats", "cell_text", "column_groups", "columns_of", "grouped_table", "rates", "table", "write_report"]

TABLE2_METHODS = BASELINE_METHODS + ("pact",)
FIG3_WINDOW = 5  # Fig. 3's moving mean: over the last 5 logged values


#: The pooled degenerate answers to the harmful prompts (the keyword judge's third outcome): a column's "suite".
DEGENERATE = "degenerate"


def columns_of(suites: list[str], task: str | None, judge: str = "") -> list[tuple[str, str | None]]:
    """Table columns (label, suite; None: the pooled ASR): ``task``'s accuracy, over-refusal, each harmful suite
    in the grid's order, ASR avg when there are two or more harmful suites, and with the ``keyword`` judge
    (refusal phrases + the degenerate rule) ``Deg``: degenerate answers to the harmful prompts, pooled."""
    from ..eval.suites import parse_suite_list

    parsed = parse_suite_list(suites)
    cols = [(f"{TASK_NAMES.get(task, task)} Acc↑", task)] if task else []
    cols += [(f"{s.column}↓", s.name) for s in parsed if s.kind == "overrefusal"]
    harmful = [s for s in parsed if s.kind == "harmful"]
    cols += [(f"{s.column}↓", s.name) for s in harmful]
    if len(harmful) >= 2:
        cols.append(("ASR avg↓", None))
    if harmful and judge.strip().lower() == "keyword":
        cols.append(("Deg", DEGENERATE))
    return cols


def rates(metrics: dict, columns: list[tuple[str, str | None]]) -> list[Rate | None]:
    """One evaluation's cells in ``columns`` order; the pooled column pools the hits and items of the harmful
    suites among the columns."""
    m = metrics["suites"]
    out = []
    for _, suite in columns:
        if suite == DEGENERATE:
            hs = [m[s] for _, s in columns if s and s in m and m[s].get("kind") == "harmful"]
            ok = hs and all(isinstance(h.get("degenerate"), int) for h in hs)
            out.append(Rate.of(sum(h["degenerate"] for h in hs), sum(h["n"] for h in hs)) if ok else None)
        elif suite:
            out.append(Rate.from_summary(m[suite]) if suite in m else None)
        else:
            hs = [m[s] for _, s in columns if s and s in m and m[s].get("kind") == "harmful"]
            out.append(Rate.of(sum(h["unsafe"] for h in hs), sum(h["n"] for h in hs)) if hs else None)
    return out


def cell_stats(rs: list[Rate]) -> dict:
    """A table cell from one rate per seed: its mean, range, and the rates themselves."""
    vals = [r.value for r in rs]
    return {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals),
            "per_seed": [{"value": r.value, "k": r.k, "n": r.n, "lo": r.lo, "hi": r.hi} for r in rs]}


def cell_text(rs: list[Rate]) -> str:
    """One seed: ``5.0 [1.4–16.5]`` (95 % Wilson interval); several: ``48.3 (45.0–52.5)`` (mean and range)."""
    if not rs:
        return "–"
    if len(rs) == 1:
        return str(rs[0])
    c = cell_stats(rs)
    return f"{c['mean']:.1f} ({c['min']:.1f}–{c['max']:.1f})"


def table(rows: list[tuple[str, list[dict]]], columns: list[tuple[str, str | None]], head: str = "Model"
          ) -> tuple[str, list[list[float | None]], list[list[dict | None]]]:
    """Markdown table of ``rows`` (label, the metrics of each seed's evaluation), the mean of every cell, and
    every cell (mean, range, per-seed rates with counts and intervals; None where a suite is missing)."""
    return grouped_table([(label, {None: ms}) for label, ms in rows], [(None, "", columns)], head)


def grouped_table(rows: list[tuple[str, dict]], groups: list[tuple], head: str = "Model"
                  ) -> tuple[str, list[list[float | None]], list[list[dict | None]]]:
    """:func:`table` with column groups (the paper's Table 2 per task, Table 4 per p): ``groups`` is
    ``[(group key, label prefix, columns)]``, each row ``(label, {group key: [metrics per seed]})``."""
    names = [head] + [f"{prefix}{c}" if prefix and not c.startswith(prefix.strip()) else c
                      for _, prefix, cols in groups for c, _ in cols]
    md = ["| " + " | ".join(names) + " |", "|" + "|".join(["---"] + ["---:"] * (len(names) - 1)) + "|"]
    values, cells = [], []
    for label, by_group in rows:
        texts, row_cells = [], []
        for key, _, columns in groups:
            per_seed = [rates(m, columns) for m in by_group.get(key, [])]
            cols = [[seed[j] for seed in per_seed if seed[j] is not None] for j in range(len(columns))]
            row_cells += [cell_stats(rs) if rs else None for rs in cols]
            texts += [cell_text(rs) for rs in cols]
        cells.append(row_cells)
        values.append([c["mean"] if c else None for c in row_cells])
        md.append("| " + " | ".join([label] + texts) + " |")
    return "\n".join(md) + "\n", values, cells


def table_csv(rows: list[tuple[str, dict]], names: list[str], cells) -> str:
    """Long CSV: one line per (row, column, seed): value, 95 % Wilson interval, hits, items; then one
    ``mean`` line per cell of several seeds with its range."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "column", "seed", "value", "ci_lo", "ci_hi", "k", "n", "min", "max"])
    for (label, _), row in zip(rows, cells):
        for col, c in zip(names, row):
            if c is None:
                continue
            for i, r in enumerate(c["per_seed"]):
                w.writerow([label, col, i, f"{r['value']:.4f}", _f(r["lo"]), _f(r["hi"]), r["k"], r["n"], "", ""])
            if len(c["per_seed"]) > 1:
                w.writerow([label, col, "mean", f"{c['mean']:.4f}", "", "", "", "", f"{c['min']:.4f}",
                            f"{c['max']:.4f}"])
    return buf.getvalue()


def _f(v) -> str:
    return "" if v is None else f"{v:.4f}"


def _label(cell, clashes: set[str]) -> str:
    label = METHOD_NAMES.get(cell.method, cell.method)
    if cell.recipe:
        label += " (authors' recipe)"
    return label if label not in clashes else f"{label} [{cell.name.split('-seed')[0]}]"


def _is_default(cell, plan) -> bool:
    """λ and N at the common config's, every safety token (a baseline reads none of them: always)."""
    if cell.method in BASELINE_METHODS:
        return True
    d = plan_defaults(plan)
    return cell.k is None and cell.lambda_kl == d["lambda_kl"] and cell.decay_start == d["decay_start"]


def plan_defaults(plan) -> dict:
    """λ and N of the grid's common config (a cell with both and every token is at the defaults)."""
    if not hasattr(plan, "_defaults"):
        from ..training.config import load_config
        from .plan import data_overrides, _set_overrides

        cfg = load_config(plan.grid.train.config, data_overrides(plan.grid, plan.out) + _set_overrides(
            plan.grid.train.set, "train.set") + [f"model={plan.aligned}", "method=pact", "safety_tokens=x"],
            check_files=False).loss_config()
        plan._defaults = {"lambda_kl": float(cfg.lambda_kl), "decay_start": int(cfg.decay_start)}
    return plan._defaults


def _row_key(c) -> str:
    """What makes a row: the resolved config less the seed and the attack data (task, p: column groups)."""
    skip = {"seed", "task", "task_file", "task_fields", "task_split", "harmful_fraction"}
    return json.dumps([{k: v for k, v in c.resolved.items() if k not in skip}, c.k], sort_keys=True, default=str)


def column_groups(plan) -> list[tuple]:
    """``[((task, p), label prefix, columns)]``: one group per (task, p) of the cells; no prefix with one."""
    keys: list[tuple] = []
    for c in plan.cells:
        if (c.task, c.p) not in keys:
            keys.append((c.task, c.p))
    tasks = {t for t, _ in keys}
    ps = {p for _, p in keys}
    out = []
    for t, p in keys:
        parts = ([TASK_NAMES.get(t, t)] if len(tasks) > 1 else []) + ([f"P={100 * p:g}%"] if len(ps) > 1 else [])
        out.append(((t, p), " ".join(parts) + " " if parts else "",
                    columns_of(plan.grid.eval.suites, t, plan.grid.eval.judge)))
    return out


def _rows(plan, results, methods, include_initial: bool, groups) -> tuple[list[tuple[str, dict]], int]:
    """Table rows ``(label, {(task, p): [metrics per seed]})`` of the finished cells of ``methods`` at the
    default λ / N / K, in ``methods`` order (a recipe row after its method); the number of rows of cells."""
    order = {m: i for i, m in enumerate(methods)}
    chosen = [c for c in plan.cells if c.method in order and _is_default(c, plan) and c.name in results]
    chosen.sort(key=lambda c: (order[c.method], c.recipe is not None))
    by_row: "OrderedDict[str, list]" = OrderedDict()
    for c in chosen:
        by_row.setdefault(_row_key(c), []).append(c)
    labels = [_label(cs[0], set()) for cs in by_row.values()]
    clashes = {lab for lab in labels if labels.count(lab) > 1}
    rows = []
    if include_initial:
        for n, m in plan_initial_results(plan).items():
            rows.append(("M_base" if n == "m_base" else "M_safe", {key: [m] for key, _, _ in groups}))
    for cs in by_row.values():
        per = {key: [results[c.name] for c in sorted(cs, key=lambda c: c.seed) if (c.task, c.p) == key]
               for key, _, _ in groups}
        rows.append((_label(cs[0], clashes), per))
    return rows, len(by_row)


def plan_initial_results(plan) -> dict:
    return getattr(plan, "_initial_results", {})


def sweep(plan, results, columns) -> list[dict]:
    """Fig. 5's points: per swept parameter with >= 2 values among PACT's cells (the others at their defaults),
    ``{"param", "points": [(value, {"asr": cell, "acc": cell})]}``."""
    d = plan_defaults(plan)
    first = plan.cells[0]
    pact = [c for c in plan.cells if c.method == "pact" and c.name in results and (c.task, c.p) == (first.task, first.p)]
    acc_col = next((i for i, (_, s) in enumerate(columns) if s and s == first.task), None)
    asr_col = asr_column(columns)
    out = []
    for param, label, pick in (("lambda_kl", "λ (lambda_kl)", lambda c: c.lambda_kl),
                               ("decay_start", "N (decay_start)", lambda c: c.decay_start),
                               ("k", "K (safety tokens)", lambda c: c.k)):
        others = [p for p in ("lambda_kl", "decay_start", "k") if p != param]

        def at_default(c, p):
            return c.k is None if p == "k" else getattr(c, p) == d[p]
        sel = [c for c in pact if all(at_default(c, p) for p in others)]
        if param == "k":
            sel = [c for c in sel if c.k is not None]
        by_value: "OrderedDict[float, list]" = OrderedDict()
        for c in sorted(sel, key=pick):
            by_value.setdefault(pick(c), []).append(c)
        if len(by_value) < 2:
            continue
        pts = []
        for v, cs in by_value.items():
            per_seed = [rates(results[c.name], columns) for c in cs]
            pt = {}
            for key, j in (("asr", asr_col), ("acc", acc_col)):
                rs = [s[j] for s in per_seed if j is not None and s[j] is not None]
                pt[key] = cell_stats(rs) if rs else None
            pts.append((v, pt))
        out.append({"param": param, "label": label, "points": pts})
    return out


def asr_column(columns: list[tuple[str, str | None]]) -> int | None:
    """Fig. 5's ASR: the pooled column, else the only harmful suite's."""
    from ..eval.suites import SUITES

    pooled = [i for i, (_, s) in enumerate(columns) if s is None]
    if pooled:
        return pooled[0]
    return next((i for i, (_, s) in enumerate(columns) if s in SUITES and SUITES[s].kind == "harmful"), None)


def _err(c: dict) -> tuple[float, float]:
    """Error bar below / above the point: the Wilson interval of one seed, the range of several."""
    if len(c["per_seed"]) == 1:
        s = c["per_seed"][0]
        return c["mean"] - s["lo"], s["hi"] - c["mean"]
    return c["mean"] - c["min"], c["max"] - c["mean"]


def plot_sweep(panels: list[dict], path: Path, asr_name: str, acc_name: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        xs = [v for v, _ in p["points"]]
        asr = [pt["asr"] for _, pt in p["points"]]
        ax.errorbar(xs, [c["mean"] if c else math.nan for c in asr],
                    yerr=list(zip(*[_err(c) if c else (0, 0) for c in asr])), fmt="o-", color="C3", capsize=3,
                    label=asr_name)
        ax.set_xlabel(p["label"])
        ax.set_ylabel("ASR (%)")
        if p["param"] == "lambda_kl" and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        acc = [pt["acc"] for _, pt in p["points"]]
        if acc_name and any(acc):
            ax2 = ax.twinx()
            ax2.errorbar(xs, [c["mean"] if c else math.nan for c in acc],
                         yerr=list(zip(*[_err(c) if c else (0, 0) for c in acc])), fmt="s--", color="black",
                         capsize=3, label=acc_name)
            ax2.set_ylabel("accuracy (%)")
            ax2.legend(loc="upper right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("PACT's sensitivity (Fig. 5)\nbars: 95 % Wilson interval (one seed) or range over seeds",
                 fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(plan, initial: dict, results: dict) -> dict:
    """Write ``OUT/5-report``: table2.md/.csv, table5.md/.csv (with two or more ladder rungs), fig5_sweep.png and
    fig5.csv (with a sweep), fig3_safety_confidence.png (SFT vs PACT's training logs), report.json."""
    from ..eval.report import load_runs, make_plots

    d = plan.out / "5-report"
    d.mkdir(parents=True, exist_ok=True)
    plan._initial_results = initial
    groups = column_groups(plan)
    columns = groups[0][2]
    names = [f"{prefix}{c}" if prefix and not c.startswith(prefix.strip()) else c
             for _, prefix, cols in groups for c, _ in cols]
    files, out = [], {"columns": names, "tables": {}}
    missing = [c.name for c in plan.cells if c.name not in results]
    for name, methods, initial_rows, title in (("table2", TABLE2_METHODS, True, "Table 2: methods"),
                                                ("table5", LADDER, False, "Table 5: the ablation ladder")):
        rows, n_cell_rows = _rows(plan, results, methods, initial_rows, groups)
        if n_cell_rows == 0 or (name == "table5" and n_cell_rows < 2):
            continue
        md, values, cells = grouped_table(rows, groups, "Model" if name == "table2" else "Variant")
        note = _note(plan, rows, missing)
        write_text_atomic(d / f"{name}.md", f"{title} ({plan.grid.name})\n\n{md}\n{note}")
        write_text_atomic(d / f"{name}.csv", table_csv(rows, names, cells))
        files += [d / f"{name}.md", d / f"{name}.csv"]
        out["tables"][name] = {"rows": [r for r, _ in rows], "markdown": md, "values": values, "cells": cells,
                               "seeds": [max(len(ms) for ms in per.values()) for _, per in rows]}
    panels = sweep(plan, results, columns)
    if panels:
        asr_name = columns[asr_column(columns)][0].rstrip("↓")
        acc_name = next((lab.rstrip("↑") for lab, s in columns if s == plan.cells[0].task), None)
        files.append(plot_sweep(panels, d / "fig5_sweep.png", asr_name, acc_name))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["param", "value", "measure", "mean", "min", "max", "ci_lo", "ci_hi", "seeds"])
        for p in panels:
            for v, pt in p["points"]:
                for key, c in pt.items():
                    if c:
                        one = c["per_seed"][0] if len(c["per_seed"]) == 1 else None
                        w.writerow([p["param"], v, key, f"{c['mean']:.4f}", f"{c['min']:.4f}", f"{c['max']:.4f}",
                                    _f(one["lo"]) if one else "", _f(one["hi"]) if one else "", len(c["per_seed"])])
        write_text_atomic(d / "fig5.csv", buf.getvalue())
        files.append(d / "fig5.csv")
        out["fig5"] = [{"param": p["param"], "points": p["points"]} for p in panels]
    base = {c.method: c for c in plan.cells if c.name in (c.method,) and c.name in results}
    if "sft" in base and "pact" in base:
        runs = [plan.out / base[m].run_dir / "run" for m in ("sft", "pact")]
        if all((r / "train_log.jsonl").is_file() for r in runs):
            files += make_plots(load_runs(runs, labels=["SFT", "PACT"]), d, smooth_steps=FIG3_WINDOW)
    out["missing"] = missing
    out["files"] = [str(f) for f in files]
    write_json_atomic(d / "report.json", out)
    return out


def _note(plan, rows, missing) -> str:
    g = plan.grid
    seeds = {len(ms) for _, per in rows for ms in per.values() if ms}
    cell_doc = ("cells: rate [95 % Wilson interval]" if seeds <= {1} else
                "cells of one seed: rate [95 % Wilson interval]; of several: mean (min–max) over the seeds")
    parts = [f"In %, {cell_doc}. Judge: {g.eval.judge}."]
    if missing:
        parts.append(f"Not run yet (left out): {', '.join(missing)}.")
    return " ".join(parts) + "\n"
