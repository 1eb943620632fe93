"""``pact report``: the results table (paper's Table 2 layout) and the training plots (Figs. 3, 5, 6, 7)."""
from __future__ import annotations

import argparse
import sys

HELP = "results table (markdown + CSV, Table 2 layout) and PNG plots (Figs. 3, 5, 6, 7) from runs"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help=HELP, description=HELP + ". A RUN is a pact eval results directory "
                       "(metrics.json) and/or a training run directory (train_log.jsonl, run.json).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="results / training run directories")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where table.md, table.csv and *.png go")
    p.add_argument("--labels", default=None, help="comma-separated row / legend labels, one per RUN")
    p.add_argument("--smooth", type=int, default=None, metavar="STEPS",
                   help="moving-average window of the curves (default: steps/50)")
    p.add_argument("--no-plots", action="store_true", help="the table only")
    p.add_argument("--allow-mixed", action="store_true",
                   help="put rows measured with different judges, --max-new-tokens or suites in one table; a "
                        "footnote under it names the differences (without it, pact report refuses them)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..eval.report import report

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    res = report(args.runs, args.output, labels=labels, smooth_steps=args.smooth, plots=not args.no_plots,
                 allow_mixed=args.allow_mixed)
    if res["markdown"]:
        print(res["markdown"], end="")
    for f in res["files"]:
        print(f"wrote {f}", file=sys.stderr)
    if not res["files"]:
        print(f"pact report: error: nothing to report from {', '.join(args.runs)}: no pact eval metrics and no "
              "logged training fields (loss, ce, kl, safety_prob per step) to plot"
              + (" (--no-plots leaves only the table of eval metrics)" if args.no_plots else ""), file=sys.stderr)
        return 2
    return 0
