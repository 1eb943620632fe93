"""``pact train``: fine-tune with PACT (or SFT / an ablation rung) in this process.

For several GPUs or nodes use the DeepSpeed launcher on the same entry point:
``deepspeed pact/train.py --config CONFIG.yaml [key=value ...]``.
"""
from __future__ import annotations

import argparse

HELP = "fine-tune with PACT, SFT or an ablation variant (one process; use `deepspeed pact/train.py` for more)"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help=HELP, description=HELP)
    p.add_argument("--config", help="YAML run config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in output_dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. method=sft loss.lambda_kl=1 lora_r=16")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..train import main

    argv = (["--config", args.config] if args.config else []) + (["--resume"] if args.resume else []) + (
        ["--overwrite"] if args.overwrite else [])
    return main(argv + list(args.overrides), single_process=True)
