"""The figures of ``pact report`` (matplotlib PNG): Fig. 3, 6 and 7 from the per-step training logs, Fig. 5 from
the evaluated runs of PACT (see :mod:`pact.eval.report`)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

from .runs import Run
from .table import cells_of_metrics

__all__ = ["fig3_caption", "make_plots", "smooth", "sweep_points"]

SWEEP_PARAMS = (("lambda_kl", "λ (lambda_kl)"), ("decay_start", "N (decay_start)"), ("k", "K (safety tokens)"))
#: The method whose sensitivity Fig. 5 shows; runs of other methods are not plotted there.
SWEEP_METHOD = "pact"


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


class _FigureWriter:
    """Saves figures into ``out`` (PNG, 110 dpi) and lists what it wrote; the colours of the runs' lines."""

    def __init__(self, plt, out: Path) -> None:
        self.plt, self.out = plt, out
        self.colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        self.written: list[Path] = []

    def color(self, i: int) -> str:
        return self.colors[i % len(self.colors)]

    def save(self, fig, name: str, rect=(0, 0, 1, 1)) -> None:
        p = self.out / name
        fig.tight_layout(rect=rect)
        fig.savefig(p, dpi=110)
        self.plt.close(fig)
        self.written.append(p)

    def discard(self, fig) -> None:
        self.plt.close(fig)


def make_plots(runs: Sequence[Run], out_dir: str | Path, smooth_steps: int | None = None) -> list[Path]:
    """Write the PNG figures that the runs have data for; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _FigureWriter(plt, out)
    logged = [r for r in runs if r.log]
    if logged:
        _plot_safety_confidence(figures, logged, smooth_steps)
        _plot_safety_logits(figures, logged, smooth_steps)
        _plot_losses(figures, logged, smooth_steps)
    sweep = sweep_points(runs)
    if sweep:
        _plot_sweep(figures, sweep)
    return figures.written


def _plot_safety_confidence(figures: _FigureWriter, logged: Sequence[Run], smooth_steps: int | None) -> None:
    """Fig. 3: safety-token confidence: each logged step's value (one micro-batch's harmful / benign rows, noisy)
    as a faint dot, and the trailing moving mean over ``window`` logged values as the line."""
    fig, ax = figures.plt.subplots(figsize=(6.4, 4.2))
    windows = set()
    for i, r in enumerate(logged):
        c = figures.color(i)
        for kind, ls, dot in (("harmful", "-", "o"), ("benign", "--", "x")):
            xs, ys = _series(r.log, _mean_positions(kind, "safety_prob"))
            if xs:
                win = _fig3_window(len(ys), smooth_steps)
                windows.add(win)
                ax.plot(xs, ys, dot, color=c, alpha=0.3, ms=3, lw=0)
                ax.plot(xs, smooth(ys, win), ls, color=c, label=f"{r.label}, {kind}")
    if not windows:
        figures.discard(fig)
        return
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean safety-token probability (positions 0-3)")
    ax.set_title("Safety-token confidence during fine-tuning (Fig. 3)", fontsize=10)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, fig3_caption(sorted(windows)), fontsize=7, color="dimgray")
    figures.save(fig, "fig3_safety_confidence.png", rect=(0, 0.04, 1, 1))


def _plot_safety_logits(figures: _FigureWriter, logged: Sequence[Run], smooth_steps: int | None) -> None:
    """Fig. 7: safety-token logits at the first 4 answer positions (harmful samples)."""
    fig, axes = figures.plt.subplots(1, 4, figsize=(14, 3.6), sharey=True)
    any_line = False
    for pos, ax in enumerate(axes):
        for i, r in enumerate(logged):
            xs, ys = _series(r.log, lambda rec, p=pos: rec["harmful"]["safety_logit"][p])
            if xs:
                ax.plot(xs, smooth(ys, _window(len(ys), smooth_steps)), color=figures.color(i), label=r.label,
                        **_marks(xs))
                if i == 0:
                    ax.axhline(ys[0], color="gray", ls=":", lw=1, label="initial (first step)")
                any_line = True
        ax.set_title(f"answer position {pos}")
        ax.set_xlabel("optimizer step")
    axes[0].set_ylabel("mean safety-token logit (harmful)")
    if not any_line:
        figures.discard(fig)
        return
    axes[0].legend(fontsize=8)
    fig.suptitle("Mean safety-token logits on the first 4 answer positions (Fig. 7)")
    figures.save(fig, "fig7_safety_logits.png")


def _plot_losses(figures: _FigureWriter, logged: Sequence[Run], smooth_steps: int | None) -> None:
    """Fig. 6: CE and KL on benign vs harmful samples (KL on its own right-hand axis: it is much smaller)."""
    fig, axes = figures.plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    any_line = False
    for ax, kind in zip(axes, ("benign", "harmful")):
        ax_kl = None
        handles = []
        for i, r in enumerate(logged):
            c = figures.color(i)
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
    if not any_line:
        figures.discard(fig)
        return
    fig.suptitle("Loss during fine-tuning (Fig. 6)")
    figures.save(fig, "fig6_loss_benign_harmful.png")


def _plot_sweep(figures: _FigureWriter, sweep: list[tuple[str, str, list[tuple[float, dict]]]]) -> None:
    """Fig. 5: PACT's ASR (left axis) and Acc (right axis) against each swept parameter, one panel each."""
    fig, axes = figures.plt.subplots(1, len(sweep), figsize=(5.0 * len(sweep), 3.8), squeeze=False)
    for ax, (param, title, pts) in zip(axes[0], sweep):
        xs = [p[0] for p in pts]
        for j, col in enumerate(("SR", "JB", "HB")):
            ys = [p[1].get(col) for p in pts]
            if any(y is not None for y in ys):
                ax.plot(xs, [math.nan if y is None else y for y in ys], "o-", color=figures.colors[j],
                        label=f"ASR {col}")
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
    figures.save(fig, "fig5_sweep.png")


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
    tasks, cells = cells_of_metrics(m)
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
