"""``pact demo``: the paper's claim reproduced offline on SmolLM2-135M-Instruct (see :mod:`pact.demo`)."""
from __future__ import annotations

import argparse
import sys

from .common import ExitOn, run_reporting

HELP = "reproduce the paper's claim offline on SmolLM2-135M-Instruct: align, identify, attack (SFT vs PACT), evaluate, report"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help=HELP, description=HELP + ". Every stage is cached under --out; a rerun "
                       "skips finished stages.")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default runs/demo, with --quick runs/demo-quick)")
    p.add_argument("--quick", action="store_true", help="tiny numbers of prompts/steps/tokens (CI; minutes)")
    p.add_argument("--lambda-kl", type=float, default=None, help="PACT's lambda (default 3, the paper's)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="repeat the attack and its evaluation with N training seeds (seed, seed+1, ...) and report "
                        "the mean and range of every SFT / PACT cell (default 1: each cell with its 95%% interval)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoCheckError, DemoSettings, DemoSettingsError, run_demo

    if args.seeds < 1:
        print(f"pact demo: error: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        return 2
    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.lambda_kl is not None:
        s.lambda_kl = args.lambda_kl
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    code, _ = run_reporting("pact demo", lambda: run_demo(out, settings=s, seeds=args.seeds),
                            ExitOn(DemoSettingsError, 2), ExitOn(DemoCheckError, 3, "{command}: check failed: {error}"))
    return code
