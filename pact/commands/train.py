"""``pact train``: fine-tune with PACT (or a baseline, or a rung of PACT's ablation ladder) in this process.

For several GPUs or nodes use the DeepSpeed launcher on the same entry point:
``deepspeed pact/train.py --config CONFIG.yaml [key=value ...]`` (the same arguments).
"""
from __future__ import annotations

import argparse

from ..training.arguments import add_train_arguments

HELP = "fine-tune with PACT, SFT or an ablation variant (one process; use `deepspeed pact/train.py` for more)"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_train_arguments(sub.add_parser("train", help=HELP, description=HELP, add_help=False))
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..training.entry import run_training

    return run_training(args, single_process=True)
