"""``pact report RUN...``: the paper's results table and its training plots.

A RUN is a directory holding any of

* ``metrics.json`` of ``pact eval`` (directly, or in a sub-directory such as
  ``RUN/eval/``): a row of the table;
* ``train_log.jsonl`` + ``run.json`` of a training run: its curves in the plots.

Table (Table 2 layout): one row per method (runs of one method on different
tasks share the row; two runs of one method on one task get a row each, named
after their directories), one column group per fine-tuning task, each group
``Acc↑ SR↓ JB↓ HB↓ OR↓`` in percent (Acc from the task's suite, SR/JB/HB the
ASR on StrongREJECT, JailbreakBench, HarmBench, OR the over-refusal rate on
benign prompts that look sensitive). Every cell is the rate with its 95 %
Wilson interval, ``5.0 [1.4–16.5]``; the number of items per column is
stated under the table (or in each cell as ``(k/n)`` where rows differ), and
``table.csv`` holds rate, interval, hits and items in separate columns. When
a run's judge counted degenerate answers (the keyword judge), each group gets
a ``Deg`` column: the degenerate answers of the run's harmful suites pooled
(``–`` for a run judged otherwise).

Rows are compared only when they were measured alike: the same judge with
the same settings, the same token budget (``max_new_tokens``) and, per
column, the same suite over the same prompts (``prompts_sha256`` of
``pact eval``; the suite and n for older metrics). Otherwise ``pact report``
refuses, naming each difference and the rows on each side, unless
``allow_mixed`` (``--allow-mixed``), which writes the table with a footnote
naming the differences. The task of a
row is the run's ``task`` (``--task`` of ``pact eval`` or the adapter's
``run.json``); a run without one (the initial model) fills every task group
it has an accuracy for, as the paper's "Initial" row does. Written as
``table.md`` and ``table.csv``.

Plots (matplotlib PNG), from the per-step training logs:

* ``fig3_safety_confidence.png`` (Fig. 3): mean safety-token probability at
  answer positions 0..3 on harmful (solid) and benign (dashed) samples: each
  logged step's value as a faint dot (one micro-batch, noisy) and their
  trailing moving mean as the line; the window (``--smooth``, default a
  tenth of the logged values, at least 3) is stated under the plot.
* ``fig7_safety_logits.png`` (Fig. 7): mean safety-token logit on harmful
  samples at each of the first 4 answer positions, per step; the dotted line
  is the first logged step (the initial model).
* ``fig6_loss_benign_harmful.png`` (Fig. 6): CE (solid, left axis) and the KL
  term (dashed, right axis) on benign and on harmful samples.
* ``fig5_sweep.png`` (Fig. 5): PACT's Acc and ASR against λ (``lambda_kl``),
  N (``decay_start``) and K (``k``), from evaluated runs of the method
  ``pact`` (by their ``run.json``; other methods and ablation rungs are not
  plotted) whose other two values are the most common ones; a panel needs at
  least two values.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .io import read_jsonl, write_text_atomic
from .metrics import RATE_CSV_PARTS, Rate, rate_csv_fields

__all__ = ["MixedSettingsError", "Run", "check_comparable", "load_runs", "make_plots", "render_table", "report",
           "table_rows"]

METHOD_NAMES = {
    "initial": "Initial", "sft": "SFT", "constrained_sft": "Constrained SFT", "safelora": "Safe LoRA",
    "safe_lora": "Safe LoRA", "asft": "AsFT", "pact": "PACT", "full_vocab": "Full-vocab KL",
    "full_vocab_kl": "Full-vocab KL",
    "safety_tokens": "+Safety tokens", "safety_weights": "+Safety weights", "response_only_ref": "+Response only ref",
}
METHOD_ORDER = ["Initial", "SFT", "Constrained SFT", "Safe LoRA", "AsFT", "Full-vocab KL", "+Safety tokens",
                "+Safety weights", "+Response only ref", "PACT"]
TASK_NAMES = {"gsm8k": "GSM8K", "sst2": "SST2", "agnews": "AGNEWS", "bbq": "BBQ"}
TASK_ORDER = ["gsm8k", "sst2", "agnews", "bbq"]
COLUMNS = ("Acc", "SR", "JB", "HB", "OR")
#: Degenerate answers to the harmful prompts (all harmful suites of a run pooled), shown when a judge assessed them.
DEG = "Deg"
ARROWS = {"Acc": "↑", "SR": "↓", "JB": "↓", "HB": "↓", "OR": "↓", DEG: ""}
SWEEP_PARAMS = (("lambda_kl", "λ (lambda_kl)"), ("decay_start", "N (decay_start)"), ("k", "K (safety tokens)"))
#: The method whose sensitivity Fig. 5 shows; runs of other methods are not plotted there.
SWEEP_METHOD = "pact"


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


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def _cells(m: dict) -> tuple[list[str], dict[str, dict[str, Rate | None]]]:
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
            tasks, cells = _cells(m)
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
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
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


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------

def _series(log: list[dict], getter) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, rec in enumerate(log):
        try:
            v = getter(rec)
        except (KeyError, TypeError, IndexError):
            v = None
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            continue
        xs.append(float(rec.get("step", i)))
        ys.append(float(v))
    return xs, ys


def smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (the first points average what there is)."""
    if window <= 1 or not ys:
        return list(ys)
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _mean_positions(kind: str, key: str):
    def get(rec):
        vals = rec[kind][key]
        if vals is None:
            return None
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None
    return get


def _marks(xs: list[float]) -> dict:
    """Point markers for short curves (few logged steps), where lines alone hide the gaps."""
    return {"marker": "o", "ms": 3} if len(xs) <= 60 else {}


def _window(n: int, smooth_steps: int | None) -> int:
    return smooth_steps if smooth_steps is not None else max(1, n // 50)


def _fig3_window(n: int, smooth_steps: int | None) -> int:
    """Fig. 3's moving-mean window: ``smooth_steps`` when given, else a tenth of the logged values (at least 3,
    at most ``n``): the per-step values are one micro-batch each, too noisy to read unsmoothed."""
    if smooth_steps is not None:
        return max(1, smooth_steps)
    return max(1, min(n, max(3, n // 10)))


def fig3_caption(windows: Sequence[int]) -> str:
    """The line under Fig. 3 that states its smoothing."""
    w = "/".join(str(x) for x in windows)
    return (f"dots: the value at each logged step (one micro-batch); lines: trailing moving mean over {w} "
            f"logged values")


def make_plots(runs: Sequence[Run], out_dir: str | Path, smooth_steps: int | None = None) -> list[Path]:
    """Write the PNG figures that the runs have data for; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    logged = [r for r in runs if r.log]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def save(fig, name, rect=(0, 0, 1, 1)):
        p = out / name
        fig.tight_layout(rect=rect)
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    if logged:
        # Fig. 3: safety-token confidence: each logged step's value (one micro-batch's harmful / benign rows,
        # noisy) as a faint dot, and the trailing moving mean over `window` logged values as the line
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        windows = set()
        for i, r in enumerate(logged):
            c = colors[i % len(colors)]
            for kind, ls, dot in (("harmful", "-", "o"), ("benign", "--", "x")):
                xs, ys = _series(r.log, _mean_positions(kind, "safety_prob"))
                if xs:
                    win = _fig3_window(len(ys), smooth_steps)
                    windows.add(win)
                    ax.plot(xs, ys, dot, color=c, alpha=0.3, ms=3, lw=0)
                    ax.plot(xs, smooth(ys, win), ls, color=c, label=f"{r.label}, {kind}")
        if windows:
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("mean safety-token probability (positions 0-3)")
            ax.set_title("Safety-token confidence during fine-tuning (Fig. 3)", fontsize=10)
            ax.legend(fontsize=8)
            fig.text(0.01, 0.01, fig3_caption(sorted(windows)), fontsize=7, color="dimgray")
            save(fig, "fig3_safety_confidence.png", rect=(0, 0.04, 1, 1))
        else:
            plt.close(fig)

        # Fig. 7: safety-token logits at the first 4 answer positions (harmful samples)
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True)
        any_line = False
        for pos, ax in enumerate(axes):
            for i, r in enumerate(logged):
                c = colors[i % len(colors)]
                xs, ys = _series(r.log, lambda rec, p=pos: rec["harmful"]["safety_logit"][p])
                if xs:
                    ax.plot(xs, smooth(ys, _window(len(ys), smooth_steps)), color=c, label=r.label, **_marks(xs))
                    if i == 0:
                        ax.axhline(ys[0], color="gray", ls=":", lw=1, label="initial (first step)")
                    any_line = True
            ax.set_title(f"answer position {pos}")
            ax.set_xlabel("optimizer step")
        axes[0].set_ylabel("mean safety-token logit (harmful)")
        if any_line:
            axes[0].legend(fontsize=8)
            fig.suptitle("Mean safety-token logits on the first 4 answer positions (Fig. 7)")
            save(fig, "fig7_safety_logits.png")
        else:
            plt.close(fig)

        # Fig. 6: CE and KL on benign vs harmful samples (KL on its own right-hand axis: it is much smaller)
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
        any_line = False
        for ax, kind in zip(axes, ("benign", "harmful")):
            ax_kl = None
            handles = []
            for i, r in enumerate(logged):
                c = colors[i % len(colors)]
                xs, ys = _series(r.log, lambda rec, kd=kind: rec[kd]["ce"])
                if xs:
                    handles += ax.plot(xs, smooth(ys, _window(len(ys), smooth_steps)), "-", color=c,
                                       label=f"{r.label} CE")
                    any_line = True
                xs, ys = _series(r.log, lambda rec, kd=kind: rec[kd]["kl"])
                if xs and any(abs(y) > 0 for y in ys):
                    ax_kl = ax_kl or ax.twinx()
                    handles += ax_kl.plot(xs, smooth(ys, _window(len(ys), smooth_steps)), "--", color=c,
                                          label=f"{r.label} KL term")
            ax.set_title(f"{kind} samples")
            ax.set_ylabel("CE per token")
            if ax_kl is not None:
                ax_kl.set_ylabel("KL per token (dashed)")
            if handles:
                ax.legend(handles=handles, fontsize=8)
        axes[1].set_xlabel("optimizer step")
        if any_line:
            fig.suptitle("Loss during fine-tuning (Fig. 6)")
            save(fig, "fig6_loss_benign_harmful.png")
        else:
            plt.close(fig)

    sweep = sweep_points(runs)
    if sweep:
        fig, axes = plt.subplots(1, len(sweep), figsize=(5.0 * len(sweep), 3.8), squeeze=False)
        for ax, (param, title, pts) in zip(axes[0], sweep):
            xs = [p[0] for p in pts]
            for j, col in enumerate(("SR", "JB", "HB")):
                ys = [p[1].get(col) for p in pts]
                if any(y is not None for y in ys):
                    ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", color=colors[j], label=f"ASR {col}")
            ax.set_xlabel(title)
            ax.set_ylabel("ASR (%)")
            if param in ("k", "decay_start") and min(xs) > 0 and max(xs) / min(xs) >= 8:
                ax.set_xscale("log", base=2)
            accs = [p[1].get("Acc") for p in pts]
            if any(a is not None for a in accs):
                ax2 = ax.twinx()
                ax2.plot(xs, [math.nan if a is None else a for a in accs], "s--", color="black", label="Acc")
                ax2.set_ylabel("Acc (%)")
                ax2.legend(loc="upper right", fontsize=8)
            ax.legend(loc="upper left", fontsize=8)
        fig.suptitle("PACT hyper-parameter sensitivity (Fig. 5)")
        save(fig, "fig5_sweep.png")
    return written


def _run_point(r: Run) -> tuple[dict, dict] | None:
    """(config, {column: value in percent}) of an evaluated training run; None when the eval's method is not the
    training run's (an eval labelled by hand as another method)."""
    cfg = r.config or next((m.get("run_config") for m in r.evals if m.get("run_config")), None)
    if not cfg or not r.evals:
        return None
    labelled = r.evals[0].get("method")
    if labelled and str(labelled).lower() != str(cfg.get("method")).lower():
        return None
    m = r.evals[0]
    tasks, cells = _cells(m)
    return cfg, {c: (v.value if v is not None else None) for c, v in cells[tasks[0]].items()}


def sweep_points(runs: Sequence[Run]) -> list[tuple[str, str, list[tuple[float, dict]]]]:
    """Per swept parameter: [(value, {Acc, SR, JB, HB})], sorted by value (Fig. 5)."""
    pts = [p for p in (_run_point(r) for r in runs) if p is not None]
    pts = [(c, v) for c, v in pts if str(c.get("method")).lower() == SWEEP_METHOD]
    out = []
    for param, title in SWEEP_PARAMS:
        others = [q for q, _ in SWEEP_PARAMS if q != param]
        have = [(c, v) for c, v in pts if isinstance(c.get(param), (int, float))]
        if not have:
            continue
        modes = {q: Counter(json.dumps(c.get(q)) for c, _ in have).most_common(1)[0][0] for q in others}
        sel = [(float(c[param]), v) for c, v in have if all(json.dumps(c.get(q)) == modes[q] for q in others)]
        if len({x for x, _ in sel}) >= 2:
            out.append((param, title, sorted(sel, key=lambda t: t[0])))
    return out


def report(paths: Sequence[str | Path], out_dir: str | Path, *, labels: Sequence[str] | None = None,
           smooth_steps: int | None = None, plots: bool = True, allow_mixed: bool = False) -> dict[str, Any]:
    """``pact report``: write ``table.md``, ``table.csv`` and the figures into ``out_dir``.

    Raises :class:`MixedSettingsError` (before writing anything) when the rows
    were measured differently, unless ``allow_mixed`` (module doc).
    """
    runs = load_runs(paths, labels)
    diffs = check_comparable(runs, allow_mixed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_text = render_table(runs, diffs)
    files: list[Path] = []
    if md:
        write_text_atomic(out / "table.md", md)
        write_text_atomic(out / "table.csv", csv_text)
        files += [out / "table.md", out / "table.csv"]
    if plots:
        files += make_plots(runs, out, smooth_steps=smooth_steps)
    return {"markdown": md, "files": [str(f) for f in files], "runs": [r.label for r in runs]}
