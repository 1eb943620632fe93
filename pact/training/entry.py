"""The driver's command line: ``pact train`` (one process) and ``deepspeed pact/train.py`` (every rank).

Parses the arguments (:mod:`pact.training.arguments`), loads the config, runs
:func:`pact.training.loop.train`, and turns the expected failures into one
line and an exit code: 2 for a bad config or input, 130 for an interruption,
3 for a rank that lost the others.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .arguments import add_train_arguments, override_list


def parse_args(argv=None) -> argparse.Namespace:
    parser = add_train_arguments(argparse.ArgumentParser(prog="pact train", description=__doc__, add_help=False))
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return parser.parse_intermixed_args(argv)


def main(argv=None, single_process: bool = False) -> int:
    """The command line; ``single_process``: ``pact train`` (one process, whatever the environment says)."""
    return run_training(parse_args(argv), single_process)


def run_training(args: argparse.Namespace, single_process: bool = False) -> int:
    """Train with the parsed command line; returns the exit code."""
    rank = int(os.environ.get("RANK", "0") or 0)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _interrupt)  # the launcher's SIGTERM after a Ctrl-C: the same one line
    try:
        return _run(args, override_list(args), single_process, rank)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    """While a stop is reported: a further SIGINT/SIGTERM (the launcher's, after a Ctrl-C) is dropped."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _run(args, overrides, single_process: bool, rank: int) -> int:
    from ..data.sources import PromptSourceError
    from ..locks import DirectoryLockedError
    from ..models import ModelLoadError
    from .checkpoint import CheckpointError, latest_checkpoint
    from .config import ConfigError, load_config
    from .launch import check_launch_environment, describe_collective_failure
    from .loop import NonFiniteLossError, train
    from .write_errors import WriteFailedError

    cfg = None
    try:
        check_launch_environment(single_process, getattr(args, "local_rank", -1))
        if single_process:  # one process: the environment's distributed variables are not ours
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(key, None)
        cfg = load_config(args.config, overrides)
        train(cfg)
    except (ConfigError, NonFiniteLossError, CheckpointError, ModelLoadError, PromptSourceError,
            DirectoryLockedError, WriteFailedError) as e:
        print(f"pact train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line (rank 0), not a traceback per rank
        _ignore_signals()
        if rank == 0:
            last = latest_checkpoint(Path(cfg.output_dir)) if cfg is not None else None
            print(f"pact train: interrupted; last checkpoint kept: {last or 'none'}"
                  + ("; continue with --resume" if last else ""), file=sys.stderr)
        return 130
    except RuntimeError as e:
        _ignore_signals()
        failure = describe_collective_failure(e, cfg.collective_timeout) if cfg is not None else None
        if failure is None:
            raise
        last = latest_checkpoint(Path(cfg.output_dir))
        print(f"pact train: error (rank {rank}): {failure}. Last checkpoint kept: {last or 'none'}", file=sys.stderr)
        return 3
    return 0
