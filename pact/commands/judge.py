"""``pact judge``: re-judge saved generations (JSONL with ``prompt`` and ``response``) without regenerating."""
from __future__ import annotations

import argparse
import json

from .eval import add_judge_args, judge_options

HELP = "judge saved generations: each output line is the input line plus unsafe, judge and judge_output"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("judge", help=HELP, description=HELP + ". Verdicts already in -o for the same answer "
                       "and judge are kept (an interrupted run resumes).")
    add_judge_args(p)
    p.add_argument("-i", "--input", required=True, metavar="JSONL", help="generations.jsonl (pact eval / intervene)")
    p.add_argument("-o", "--output", required=True, metavar="JSONL", help="verdicts.jsonl")
    p.add_argument("--device", default=None, help="device of a model judge (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=16, help="answers per judge call")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..eval.verdicts import judge_file

    summary = judge_file(args.input, args.output, args.judge, chunk_size=args.batch_size,
                         progress=not args.no_progress, judge_options=judge_options(args))
    print(json.dumps({"input": args.input, "output": args.output, **summary}))
    return 0
