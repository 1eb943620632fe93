"""Atomic checkpoints: DeepSpeed state (weights, optimizer, scheduler), RNG state per rank, exported weights.

A checkpoint is written into ``checkpoints/step-NNNNNN.tmp`` by every rank,
then renamed by rank 0 to ``checkpoints/step-NNNNNN`` and recorded in
``checkpoints/latest`` (itself replaced atomically). A run that dies while
writing leaves a ``.tmp`` directory that is never read, and the previous
checkpoint stays the latest.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..reference import _gathered


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_weights(engine, out_dir: Path, rank: int) -> None:
    """Save the trainable weights for inference: the LoRA adapter (peft) or the full model.

    Runs on every rank (ZeRO-3 gathers the partitioned parameters); rank 0 writes.
    """
    model = engine.module.model  # RowModel -> peft model or causal LM
    params = [p for p in model.parameters() if p.requires_grad] if hasattr(model, "peft_config") else list(
        model.parameters())
    with _gathered(params):
        if rank == 0:
            model.save_pretrained(str(out_dir), safe_serialization=True)


def export_final(engine, run_dir: Path, rank: int) -> Path:
    """The trained weights at ``run_dir/final`` (adapter or full model), written atomically."""
    final = Path(run_dir) / "final"
    tmp = Path(run_dir) / "final.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    export_weights(engine, tmp, rank)
    _barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    _barrier()
    return final


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The last completed checkpoint directory, or None."""
    pointer = checkpoints_root(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = checkpoints_root(run_dir) / pointer.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def save_checkpoint(engine, run_dir: Path, step: int, trainer_state: dict, rank: int, keep: int = 2) -> Path:
    """Write a checkpoint of ``step`` atomically (collective: every rank calls it)."""
    root = checkpoints_root(run_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag="state", save_latest=False, exclude_frozen_parameters=True)
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    export_weights(engine, tmp / "weights", rank)
    _barrier()
    if rank == 0:
        write_text_atomic(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(root / "latest", final.name)
        done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(engine, path: Path, rank: int) -> dict:
    """Restore the engine, this rank's RNG state, and return the trainer state."""
    engine.load_checkpoint(str(path), tag="state", load_module_strict=False)
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: resume with the same number of ranks as the run had")
    set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())
