"""Atomic checkpoints: DeepSpeed state (weights, optimizer, scheduler), RNG state per rank, exported weights.

No checkpoint file is ever read as code: every ``.pt`` file is read with
``torch.load(weights_only=True)`` (:mod:`pact.training.safe_load`), and the
RNG states are saved as tensors and plain data.

A checkpoint is written into ``checkpoints/step-NNNNNN.tmp`` by every rank,
then renamed by rank 0 to ``checkpoints/step-NNNNNN`` and recorded in
``checkpoints/latest`` (itself replaced atomically). A run that dies while
writing leaves a ``.tmp`` directory that is never read, and the previous
checkpoint stays the latest. Each checkpoint carries a ``manifest.json`` of
its files' sizes and SHA-256, written last: a resume starts from the newest
checkpoint whose files match it (:func:`resume_point`), whatever ``latest``
says. A state holding NaN or infinity is never written.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..atomic_files import write_text_atomic
from ..distributed import barrier, gathered
from .faults import fault_point
from .safe_load import UnsafeCheckpointError, safe_deepspeed_loading, safe_torch_load


#: Marks the RNG file layout below (tensors and plain data only, readable with ``weights_only=True``).
RNG_FORMAT = "pact-rng-1"


def rng_state() -> dict:
    """This process's RNG states as tensors and plain data: torch (``uint8`` tensor), Python's ``random``
    (version, 625 ints, gauss), numpy's MT19937 (624 keys as an ``int64`` tensor, position, gauss), CUDA."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"format": RNG_FORMAT, "torch": torch.get_rng_state(),
            "python": {"version": version, "state": list(internal), "gauss": gauss},
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _numpy_classes() -> list:
    """The numpy globals of an array in a pickle (an RNG file of format 0: numpy arrays); rebuilding one makes an
    array from its bytes and calls nothing else (object arrays' items go through the same restricted reader)."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
    return [core._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_rng_state(path: Path) -> dict:
    """The RNG states saved by :func:`rng_state` (or an RNG file of format 0, numpy arrays inside), read without
    running code; raises :class:`CheckpointError` naming ``path`` for anything else."""
    try:
        state = safe_torch_load(path, extra_classes=_numpy_classes())
    except UnsafeCheckpointError as e:
        raise CheckpointError(str(e)) from None
    except Exception as e:  # torn or foreign file
        raise CheckpointError(f"{path} is not an RNG state file pact can read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not {"torch", "python", "numpy"} <= set(state):
        raise CheckpointError(f"{path} is not an RNG state file of pact (it holds no torch, python and numpy states)")
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states of :func:`rng_state` (or of format 0's tuple layout)."""
    torch.set_rng_state(state["torch"])
    py, npy = state["python"], state["numpy"]
    if state.get("format") == RNG_FORMAT:
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
    else:
        random.setstate(py)
        np.random.set_state(npy)
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_weights(engine, out_dir: Path, rank: int) -> None:
    """Save the trainable weights for inference: the LoRA adapter (peft) or the full model.

    Runs on every rank (ZeRO-3 gathers the partitioned parameters); rank 0 writes.
    """
    model = engine.module.model  # RowModel -> peft model or causal LM
    params = [p for p in model.parameters() if p.requires_grad] if hasattr(model, "peft_config") else list(
        model.parameters())
    with gathered(params):
        if rank == 0:
            model.save_pretrained(str(out_dir), safe_serialization=True)


def export_final(engine, run_dir: Path, rank: int) -> Path:
    """The trained weights at ``run_dir/final`` (adapter or full model), written atomically."""
    final = Path(run_dir) / "final"
    tmp = Path(run_dir) / "final.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    export_weights(engine, tmp, rank)
    barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    barrier()
    return final


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


class CheckpointError(RuntimeError):
    """No checkpoint can be written (non-finite state) or resumed from (none intact); the message says why."""


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    """``manifest.json``: size and SHA-256 of every file of a checkpoint (written last, atomically)."""
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in _files(directory)}
    write_text_atomic(directory / MANIFEST, json.dumps({"files": files}, indent=1))


def verify_checkpoint(path: Path, hashes: bool = True, step_key: str = "step") -> str | None:
    """None when the checkpoint at ``path`` is intact, else a sentence saying what is damaged.

    Intact: its manifest lists every file with the size (and, ``hashes``, the
    SHA-256) it was written with, and ``trainer_state.json`` parses with its
    ``step_key`` (``global_step`` in a Trainer's checkpoint).
    """
    path = Path(path)
    if not path.is_dir():
        return f"{path.name} does not exist"
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path.name} has no readable {MANIFEST} (its write did not finish)"
    for rel, meta in manifest.items():
        f = path / rel
        if not f.is_file():
            return f"{path.name}/{rel} is missing"
        size = f.stat().st_size
        if size != meta["size"]:
            return f"{path.name}/{rel} is truncated or altered ({size} bytes, written with {meta['size']})"
        if hashes and _sha256(f) != meta["sha256"]:
            return f"{path.name}/{rel} is altered (SHA-256 differs from the one written)"
    try:
        json.loads((path / "trainer_state.json").read_text())[step_key]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path.name}/trainer_state.json is unreadable"
    return None


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The completed (renamed) checkpoint directories, newest step first."""
    root = checkpoints_root(run_dir)
    found = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name, reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint directory (sizes checked, not hashes), or None."""
    for path in step_checkpoints(run_dir):
        if verify_checkpoint(path, hashes=False) is None:
            return path
    return None


def resume_point(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from: the newest intact one (hashes checked), and notes on what was skipped.

    The ``latest`` pointer is only compared, never trusted: a pointer that is
    empty, damaged or names a checkpoint without its state is reported and
    the directories themselves decide. Raises :class:`CheckpointError` when
    checkpoints exist but none is intact (never a silent restart from step 0).
    """
    notes = []
    pointer = checkpoints_root(run_dir) / "latest"
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else None
    candidates = step_checkpoints(run_dir)
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            if named is not None and named != path.name:
                notes.append(f"the latest pointer names {named!r}, not the newest intact checkpoint {path.name}")
            return path, notes
        notes.append(f"skipped {problem}")
    if candidates:
        raise CheckpointError(f"--resume: no intact checkpoint in {checkpoints_root(run_dir)} ({'; '.join(notes)}); "
                              "refusing to restart from step 0 over them. Move them away to start anew, or "
                              "pass overwrite=true without --resume to delete the run")
    return None, notes


def _nonfinite_state(engine) -> bool:
    """True when a trainable parameter, an fp32 master copy or an optimizer moment of this rank is not finite."""
    tensors = [p for p in engine.module.parameters() if p.requires_grad]
    opt = getattr(engine, "optimizer", None)
    inner = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO wrappers hold the torch optimizer
    if inner is not None:
        for group in getattr(inner, "param_groups", []):
            tensors += list(group["params"])
        for state in getattr(inner, "state", {}).values():
            tensors += [v for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    bad = any(t.numel() and not bool(torch.isfinite(t.detach()).all()) for t in tensors)
    flag = torch.tensor([1.0 if bad else 0.0], device=tensors[0].device if tensors else "cpu")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() > 0


def save_checkpoint(engine, run_dir: Path, step: int, trainer_state: dict, rank: int, keep: int = 2) -> Path:
    """Write a checkpoint of ``step`` atomically (collective: every rank calls it).

    Refuses (:class:`CheckpointError`, nothing written) when the weights or
    the optimizer state hold NaN or infinity, so a non-finite state never
    becomes the checkpoint a resume starts from. The manifest of sizes and
    hashes is written last, before the rename, and checked on resume.
    """
    root = checkpoints_root(run_dir)
    if _nonfinite_state(engine):
        last = latest_checkpoint(run_dir)
        raise CheckpointError(f"step {step}: the weights or optimizer state hold NaN or infinity; no checkpoint "
                              f"written. Last good checkpoint kept: {last or 'none'}. Lower learning_rate or "
                              "check the data")
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(tmp), tag="state", save_latest=False, exclude_frozen_parameters=True)
    fault_point("checkpoint-write")
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    export_weights(engine, tmp / "weights", rank)
    barrier()
    if rank == 0:
        write_text_atomic(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2))
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fault_point("checkpoint-rename")
        write_text_atomic(root / "latest", final.name)
        for old in step_checkpoints(run_dir)[keep:] if keep > 0 else []:  # newest first: keep the first `keep`
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(engine, path: Path, rank: int) -> dict:
    """Restore the engine, this rank's RNG state, and return the trainer state.

    No file is read as code: the RNG file and DeepSpeed's files are read with
    ``weights_only=True`` (:mod:`pact.training.safe_load`); a file holding
    anything but tensors and plain data raises :class:`CheckpointError` naming it.
    """
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{rng_file} is missing: resume with the same number of ranks as the run had")
    rng = read_rng_state(rng_file)
    try:
        with safe_deepspeed_loading(engine, path / "state"):
            load_path, _ = engine.load_checkpoint(str(path), tag="state", load_module_strict=False)
    except UnsafeCheckpointError as e:
        raise CheckpointError(str(e)) from None
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load the state in {path}")
    set_rng_state(rng)
    return json.loads((path / "trainer_state.json").read_text())
