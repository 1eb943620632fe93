"""The ``pact`` command line: ``pact <command> ...`` (also ``python -m pact``).

Each command lives in its own module under :mod:`pact.commands` with two
functions: ``register(subparsers)`` adds its parser (and sets
``func=run``), ``run(args) -> int`` does the work. To add a command, write
the module and append its name to :data:`COMMANDS`. Heavy imports (torch,
transformers) happen inside ``run`` so ``pact --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

#: Modules under ``pact.commands`` that register a subcommand, in help order.
COMMANDS: list[str] = ["demo", "experiment", "identify", "intervene", "train", "eval", "judge", "report", "intervention_report"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pact",
        description="PACT: fine-tune an aligned LLM without losing its safety alignment.",
    )
    parser.add_argument("--version", action="version", version=f"pact {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pact.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all("=" in x for x in extra):
        args.overrides += extra  # key=value overrides after a flag: pact train --config C --resume lr=1
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):  # a bare `pact`: the list of commands
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # expected user errors get one clean line
        from .commands.common import USER_ERRORS

        if isinstance(e, USER_ERRORS):
            print(f"pact {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
