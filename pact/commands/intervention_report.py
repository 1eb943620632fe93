"""``pact intervention-report``: Table 1 (ASR under boost / ablate of the safety set vs a random set)."""
from __future__ import annotations

import argparse
import sys

from .eval import add_judge_args, judge_options

HELP = "the paper's Table 1: judge pact intervene outputs, ASR per intervention and token set"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("intervention-report", help=HELP, description=HELP + ". Give the JSONL files of "
                       "pact intervene (mode none, boost, ablate; --control safety and random) or their directory.")
    p.add_argument("inputs", nargs="+", metavar="JSONL_OR_DIR")
    add_judge_args(p)
    p.add_argument("--device", default=None, help="device of a model judge (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="table.md, table.csv, intervention.json and verdicts/")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..eval.intervention_report import intervention_report

    res = intervention_report(args.inputs, args.output, args.judge, judge_options=judge_options(args),
                              progress=not args.no_progress)
    print(res["markdown"], end="")
    print(f"wrote {args.output}/table.md, table.csv, intervention.json", file=sys.stderr)
    return 0
