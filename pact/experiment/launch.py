"""How ``pact experiment`` launches a training: ``deepspeed pact/train.py`` (or ``python pact/train.py`` without
the launcher), and where it generates and identifies (the GPU when there is one)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .grid import Launch
    from .plan import Cell, Plan

__all__ = ["CellFailedError", "device", "launcher_args", "python_launcher", "run_training", "train_command"]


def device() -> str:
    """Where the runner generates and identifies: the GPU when there is one (training picks its own)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def free_port() -> int:
    """A TCP port free on this machine now (the launcher's --master_port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CellFailedError(RuntimeError):
    """A training subprocess failed; the message names the command (its own error is printed above it)."""


def python_launcher() -> str:
    """The ``deepspeed`` launcher beside this Python, else on PATH; None when not installed."""
    import shutil

    launcher = Path(sys.executable).with_name("deepspeed")
    return str(launcher) if launcher.is_file() else shutil.which("deepspeed")


def launcher_args(launch, port: int | str = "PORT") -> list[str]:
    """``deepspeed`` launcher arguments: ``--hostfile``/``--include``/``--num_gpus`` (default one device)."""
    args = []
    if launch.hostfile:
        args += ["--hostfile", launch.hostfile]
    if launch.include:
        args += ["--include", launch.include]
    if launch.num_gpus is not None or not (launch.hostfile or launch.include):
        args += ["--num_gpus", str(launch.num_gpus or 1)]
    return args + ["--master_port", str(port)]


def train_command(plan: Plan, cell: Cell, port: int | str = "PORT") -> list[str]:
    """The training command of a cell as ``pact experiment --plan`` lists it."""
    return ["deepspeed", *launcher_args(plan.grid.launch, port), "pact/train.py", *cell.train_args(plan.out)]


def run_training(launch: Launch, overrides: list[str], run_dir: Path, config: str | None,
                 log: Callable[[str], None]) -> None:
    """``deepspeed pact/train.py [--config C] key=value ...`` (one CPU process without a GPU; the grid's or
    the command line's --num_gpus / --hostfile otherwise); ``python pact/train.py`` without the launcher."""
    script = Path(__file__).resolve().parent.parent / "train.py"
    launcher = python_launcher()
    if launcher:
        where = launcher_args(launch, free_port())
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        if not (launch.num_gpus or launch.hostfile or launch.include) and visible and device() == "cuda":
            # the launcher ignores CUDA_VISIBLE_DEVICES given --num_gpus: name the first visible GPU instead
            where = ["--include", f"localhost:{visible}"] + where[2:]
        cmd = [launcher, *where, str(script)]
    else:
        cmd = [sys.executable, str(script)]
    # continue a run this runner started (its run.json is there); a new one otherwise (resume needs a run)
    cmd += (["--config", config] if config else []) + overrides + [f"output_dir={run_dir}"] + (
        ["resume=true"] if (Path(run_dir) / "run.json").is_file() else [])
    log("$ " + " ".join(cmd))
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if r.returncode != 0:
        raise CellFailedError(f"training failed (exit {r.returncode}; its error is above): {' '.join(cmd)}")
