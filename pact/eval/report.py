"""``pact report RUN...``: the paper's results table and its training plots.

A RUN is a directory holding any of

* ``metrics.json`` of ``pact eval`` (directly, or in a sub-directory such as
  ``RUN/eval/``): a row of the table;
* ``train_log.jsonl`` + ``run.json`` of a training run: its curves in the plots.

Table (Table 2 layout): one row per method (runs of one method on different
tasks share the row; two runs of one method on one task get a row each, named
after their directories), one column group per fine-tuning task, each group ``Acc↑ SR↓ JB↓ HB↓`` in percent (Acc from the task's suite,
SR/JB/HB the ASR on StrongREJECT, JailbreakBench, HarmBench). The task of a
row is the run's ``task`` (``--task`` of ``pact eval`` or the adapter's
``run.json``); a run without one (the initial model) fills every task group
it has an accuracy for, as the paper's "Initial" row does. Written as
``table.md`` and ``table.csv``.

Plots (matplotlib PNG), from the per-step training logs:

* ``fig3_safety_confidence.png`` (Fig. 3): mean safety-token probability at
  answer positions 0..3 on harmful (solid) and benign (dashed) samples, per step.
* ``fig7_safety_logits.png`` (Fig. 7): mean safety-token logit on harmful
  samples at each of the first 4 answer positions, per step; the dotted line
  is the first logged step (the initial model).
* ``fig6_loss_benign_harmful.png`` (Fig. 6): CE (solid, left axis) and the KL
  term (dashed, right axis) on benign and on harmful samples.
* ``fig5_sweep.png`` (Fig. 5): Acc and ASR against λ (``lambda_kl``), N
  (``decay_start``) and K (``k``), from evaluated runs whose other two values
  are the most common ones; a panel needs at least two values.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .io import read_jsonl, write_text_atomic

__all__ = ["Run", "load_runs", "make_plots", "render_table", "report", "table_rows"]

METHOD_NAMES = {
    "initial": "Initial", "sft": "SFT", "constrained_sft": "Constrained SFT", "safelora": "Safe LoRA",
    "safe_lora": "Safe LoRA", "asft": "AsFT", "pact": "PACT", "full_vocab": "Full-vocab KL",
    "full_vocab_kl": "Full-vocab KL",
    "safety_tokens": "+Safety tokens", "safety_weights": "+Safety weights", "response_only_ref": "+Response only ref",
}
METHOD_ORDER = ["Initial", "SFT", "Constrained SFT", "Safe LoRA", "AsFT", "Full-vocab KL", "+Safety tokens",
                "+Safety weights", "+Response only ref", "PACT"]
TASK_NAMES = {"gsm8k": "GSM8K", "sst2": "SST2", "agnews": "AGNEWS"}
TASK_ORDER = ["gsm8k", "sst2", "agnews"]
COLUMNS = ("Acc", "SR", "JB", "HB")
ARROWS = {"Acc": "↑", "SR": "↓", "JB": "↓", "HB": "↓"}
SWEEP_PARAMS = (("lambda_kl", "λ (lambda_kl)"), ("decay_start", "N (decay_start)"), ("k", "K (safety tokens)"))


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

def _cells(m: dict) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """(tasks, {task: {column: value}}) of one metrics.json."""
    suites = m.get("suites", {})
    harm = {v["column"]: v.get("asr") for v in suites.values() if v.get("kind") == "harmful"}
    task_suites = [k for k, v in suites.items() if v.get("kind") == "task"]
    task = m.get("task") or (m.get("run_config") or {}).get("task")
    tasks = [task] if task else (task_suites or ["-"])
    out = {}
    for t in tasks:
        acc = suites.get(t, {}).get("accuracy") if t in suites else None
        out[t] = {"Acc": acc, **{c: harm.get(c) for c in ("SR", "JB", "HB")}}
    return tasks, out


def table_rows(runs: Sequence[Run]) -> tuple[list[str], list[tuple[str, dict[str, dict[str, float | None]]]]]:
    """(task order, [(row label, {task: {column: value}})]) for the evaluated runs, in the paper's method order."""
    rows: dict[str, dict[str, dict]] = {}
    origin: dict[str, str] = {}
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
                else:
                    row[t] = cells[t]
                    origin.setdefault(label, str(r.path))
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    labels = sorted(rows, key=lambda lab: (order.get(lab.split(" (")[0].split(" [")[0], len(order)), list(rows).index(lab)))
    tasks = sorted(all_tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER),
                                             all_tasks.index(t)))
    return tasks, [(lab, rows[lab]) for lab in labels]


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _task_prefix(task: str) -> str:
    """Column-group prefix: ``GSM8K `` etc.; none for runs without a task (no Acc)."""
    return "" if task == "-" else f"{TASK_NAMES.get(task, task)} "


def render_table(runs: Sequence[Run]) -> tuple[str, str]:
    """(markdown, CSV) of the results table."""
    tasks, rows = table_rows(runs)
    if not rows:
        return "", ""
    head = ["Method"] + [f"{_task_prefix(t)}{c}{ARROWS[c]}" for t in tasks for c in COLUMNS]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method"] + [f"{_task_prefix(t)}{c}" for t in tasks for c in COLUMNS])
    for label, cells in rows:
        vals = [cells.get(t, {}).get(c) for t in tasks for c in COLUMNS]
        md.append("| " + " | ".join([label] + [_fmt(v) for v in vals]) + " |")
        w.writerow([label] + ["" if v is None else f"{v:.4f}" for v in vals])
    return "\n".join(md) + "\n", buf.getvalue()


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

    def save(fig, name):
        p = out / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    if logged:
        # Fig. 3: safety-token confidence
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        any_line = False
        for i, r in enumerate(logged):
            c = colors[i % len(colors)]
            for kind, ls in (("harmful", "-"), ("benign", "--")):
                xs, ys = _series(r.log, _mean_positions(kind, "safety_prob"))
                if xs:
                    ax.plot(xs, smooth(ys, _window(len(ys), smooth_steps)), ls, color=c, label=f"{r.label}, {kind}",
                            **_marks(xs))
                    any_line = True
        if any_line:
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("mean safety-token probability (positions 0-3)")
            ax.set_title("Safety-token confidence during fine-tuning (Fig. 3)")
            ax.legend(fontsize=8)
            save(fig, "fig3_safety_confidence.png")
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
        fig.suptitle("Hyper-parameter sensitivity (Fig. 5)")
        save(fig, "fig5_sweep.png")
    return written


def _run_point(r: Run) -> tuple[dict, dict] | None:
    """(config, {column: value}) of an evaluated training run."""
    cfg = r.config or next((m.get("run_config") for m in r.evals if m.get("run_config")), None)
    if not cfg or not r.evals:
        return None
    m = r.evals[0]
    tasks, cells = _cells(m)
    return cfg, cells[tasks[0]]


def sweep_points(runs: Sequence[Run]) -> list[tuple[str, str, list[tuple[float, dict]]]]:
    """Per swept parameter: [(value, {Acc, SR, JB, HB})], sorted by value (Fig. 5)."""
    pts = [p for p in (_run_point(r) for r in runs) if p is not None]
    pts = [(c, v) for c, v in pts if str(c.get("method", "pact")).lower() not in ("sft", "initial")]
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
           smooth_steps: int | None = None, plots: bool = True) -> dict[str, Any]:
    """``pact report``: write ``table.md``, ``table.csv`` and the figures into ``out_dir``."""
    runs = load_runs(paths, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_text = render_table(runs)
    files: list[Path] = []
    if md:
        write_text_atomic(out / "table.md", md)
        write_text_atomic(out / "table.csv", csv_text)
        files += [out / "table.md", out / "table.csv"]
    if plots:
        files += make_plots(runs, out, smooth_steps=smooth_steps)
    return {"markdown": md, "files": [str(f) for f in files], "runs": [r.label for r in runs]}
