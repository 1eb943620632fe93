"""The command line of a training run, shared by ``pact train`` and ``deepspeed pact/train.py``:
``[--config CONFIG.yaml] [--resume] [--overwrite] [key=value | @FILE ...]``.

Its ``--help`` lists every config key with its type, default and help text (the fields of
:class:`pact.training.config.TrainConfig`), read only when help is asked for, so building the parser
imports no torch.
"""
from __future__ import annotations

import argparse

KEYS_HEADING = "config keys (YAML `key: value`, or key=value on the command line; loss.* keys as loss.lambda_kl=3):"


class _HelpWithKeys(argparse.Action):
    """``-h/--help``: the usage, the options and every config key."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .config import config_help

        parser.epilog = f"{KEYS_HEADING}\n{config_help()}"
        parser.print_help()
        parser.exit()


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options and overrides of a training run (``parser`` made with ``add_help=False``)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("-h", "--help", action=_HelpWithKeys, help="show this help, every config key, and exit")
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run already in output_dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config keys (listed below), e.g. method=sft loss.lambda_kl=1 lora_r=16; @FILE applies "
                             "every key of a YAML file (a recipe overlay)")
    return parser


def override_list(args: argparse.Namespace) -> list[str]:
    """The parsed command line as ``load_config`` overrides (``--resume`` and ``--overwrite`` as keys)."""
    return list(args.overrides) + ["resume=true"] * bool(args.resume) + ["overwrite=true"] * bool(args.overwrite)
