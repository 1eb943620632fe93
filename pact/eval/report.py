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

from pathlib import Path
from typing import Any, Sequence

from .io import write_text_atomic
from .plots import fig3_caption, make_plots, smooth, sweep_points
from .runs import METHOD_NAMES, METHOD_ORDER, Run, load_runs, method_name
from .table import TASK_NAMES, MixedSettingsError, check_comparable, render_table, table_rows

__all__ = ["METHOD_NAMES", "METHOD_ORDER", "TASK_NAMES", "MixedSettingsError", "Run", "check_comparable",
           "fig3_caption", "load_runs", "make_plots", "method_name", "render_table", "report", "smooth",
           "sweep_points", "table_rows"]


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
