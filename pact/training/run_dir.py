"""The run directory is never silently reused: checked before any model or data is touched.

* ``output_dir`` must be a directory this process can write (not a file, not
  under a file, not read-only).
* A new run (no ``--resume``) refuses a directory that holds a run
  (``run.json``, ``train_log.jsonl``, ``checkpoints/``, ``final/``) unless
  ``overwrite=true``; then that run is deleted (rank 0, just before the new
  ``run.json`` is written).
* ``--resume`` compares the config with the run's ``run.json`` and refuses
  any changed key, naming each with its old and new value, unless
  ``resume_changes=true``; then the changes are recorded in ``run.json``
  (``resume_changes``) and the optimisation keys take effect from the resumed
  step (:func:`apply_resume_changes`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import ConfigError, TrainConfig

RUN_ENTRIES = ("run.json", "train_log.jsonl", "checkpoints", "final", "mixture.json")
#: Keys that may differ on --resume without being a change of the experiment.
RESUME_FREE = ("resume", "overwrite", "resume_changes", "stop_after_steps", "output_dir")


def check_writable(output_dir: str) -> None:
    """``output_dir`` is, or can be created as, a writable directory (nothing is created here)."""
    path = Path(output_dir)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"is under {parent}, which is a file"
            raise ConfigError(f"output_dir={output_dir} {where}; choose a directory path")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={output_dir} is not writable ({existing} denies writing); choose another "
                          "output_dir or fix its permissions")


def existing_run(output_dir: str) -> list[str]:
    """The entries of a run already in ``output_dir`` (empty: none)."""
    return [name for name in RUN_ENTRIES if (Path(output_dir) / name).exists()]


def previous_config(output_dir: str) -> dict | None:
    path = Path(output_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path} is not valid JSON; the run's config cannot be compared for --resume. "
                          "Restore it, or start anew with overwrite=true") from None


def config_changes(cfg: TrainConfig, before: dict) -> dict[str, tuple]:
    """``{key: (old, new)}`` for every config key that differs from the run's ``run.json``."""
    now = cfg.to_dict()
    return {k: (before.get(k), v) for k, v in now.items()
            if k not in RESUME_FREE and k in before and before.get(k) != v}


def check_run_dir(cfg: TrainConfig) -> dict[str, tuple]:
    """Refuse a reuse of ``output_dir`` that would lose or mix runs; returns the accepted resume changes."""
    check_writable(cfg.output_dir)
    found = existing_run(cfg.output_dir)
    if not cfg.resume:
        if found and not cfg.overwrite:
            raise ConfigError(f"output_dir={cfg.output_dir} holds a run ({', '.join(found)}); continue it with "
                              "--resume, choose another output_dir, or pass overwrite=true to delete it")
        return {}
    before = previous_config(cfg.output_dir)
    if before is None:
        return {}
    changes = config_changes(cfg, before)
    if changes and not cfg.resume_changes:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigError(f"--resume with a config that differs from the run in {cfg.output_dir}: {listed}. "
                          "Resume with the run's own settings, or pass resume_changes=true to continue with "
                          "the new ones (recorded in run.json)")
    return changes


def clear_run(output_dir: str) -> None:
    """Delete the run in ``output_dir`` (``overwrite=true``; rank 0)."""
    for name in RUN_ENTRIES + ("tensorboard",):
        path = Path(output_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    for path in Path(output_dir).glob("samples-rank*.jsonl"):
        path.unlink()


def run_record(record: dict, output_dir: str, changes: dict[str, tuple]) -> dict:
    """``run.json``'s content: the new record, plus the history of accepted resume changes."""
    before = previous_config(output_dir) or {}
    history = list(before.get("resume_changes_history", []))
    if changes:
        history.append({"keys": {k: [old, new] for k, (old, new) in changes.items()}})
    return dict(record, resume_changes_history=history) if history else record


def apply_resume_changes(engine, cfg: TrainConfig, changes: dict[str, tuple]) -> list[str]:
    """Make changed optimisation keys take effect after a checkpoint restored the old ones.

    The checkpoint restores the optimizer's and scheduler's state, including
    the old learning rate, betas and weight decay; they are set to the new
    values here, so a new ``learning_rate`` is never silently ignored.
    Returns the keys applied this way.
    """
    applied = []
    scheduler = engine.lr_scheduler
    groups = scheduler.optimizer.param_groups
    if "learning_rate" in changes:
        scheduler.base_lrs = [cfg.learning_rate] * len(groups)
        for group, factor in zip(groups, [lam(scheduler.last_epoch) for lam in scheduler.lr_lambdas]):
            group["lr"] = cfg.learning_rate * factor
        scheduler._last_lr = [g["lr"] for g in groups]
        applied.append("learning_rate")
    if "adam_betas" in changes:
        for group in groups:
            group["betas"] = tuple(cfg.adam_betas)
        applied.append("adam_betas")
    if "weight_decay" in changes:
        for group in groups:
            group["weight_decay"] = cfg.weight_decay
        applied.append("weight_decay")
    return applied
