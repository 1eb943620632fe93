"""The run directory is never silently reused: checked before any model or data is touched.

* ``output_dir`` must be a directory this process can write (not a file, not
  under a file, not read-only).
* A new run (no ``--resume``) refuses a directory that holds a run
  (``run.json``, ``train_log.jsonl``, ``checkpoints/``, ``final/``) unless
  ``overwrite=true``; then that run is deleted (rank 0, just before the new
  ``run.json`` is written).
* ``--resume`` needs a run: a directory without ``run.json`` (mistyped,
  empty, or never started) is refused, never trained from step 0.
* ``--resume`` compares the config with the run's ``run.json`` and refuses
  any changed key, naming each with its old and new value, unless
  ``resume_changes=true``; then the changes are recorded in ``run.json``
  (``resume_changes``) and the optimisation keys take effect from the resumed
  step (:func:`apply_resume_changes`).
* The run's identity (:func:`run_identity`, ``run.json``'s ``identity``) is
  content: digests of the safety tokens, the tokenizer, the tokenised data,
  the model's weights and the config, and the world size and global batch.
  ``--resume`` compares it too (:func:`identity_changes`): a tokens file or
  model replaced at the same path is named, not trained on silently. A new
  world size needs the same global batch (and ZeRO stage 0, whose optimizer
  state is not split over the ranks).
* One writer: rank 0 holds :class:`pact.locks.DirectoryLock` on
  ``output_dir`` for the whole run (:func:`lock_run_dir`); a second run into
  it is refused naming the first, before anything is touched.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..digests import json_digest
from ..locks import DirectoryLock
from .config import ConfigError, TrainConfig

RUN_ENTRIES = ("run.json", "train_log.jsonl", "checkpoints", "final", "mixture.json")
#: Keys that may differ on --resume without being a change of the experiment.
RESUME_FREE = ("resume", "overwrite", "resume_changes", "stop_after_steps", "output_dir", "collective_timeout")
#: What ``identity`` names, in the words a refusal uses.
IDENTITY_NAMES = {
    "safety_tokens": "the safety tokens (ids and weights of the tokens file)", "k": "K (the number of safety tokens)",
    "tokenizer": "the tokenizer (vocabulary, special tokens, chat template)",
    "data": "the tokenised training data", "model": "the model's weights", "base_model": "base_model's weights",
    "config": "the config", "world_size": "the number of ranks", "global_batch": "the global batch",
}


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


#: The value a run had for a key its ``run.json`` does not record (the key did not exist when it was written).
UNRECORDED_VALUES = {"loss_normalization": "micro_batch"}


def config_changes(cfg: TrainConfig, before: dict) -> dict[str, tuple]:
    """``{key: (old, new)}`` for every config key that differs from the run's ``run.json``; a key it does not
    record counts as :data:`UNRECORDED_VALUES`' value, or is not compared when it has none there."""
    now = cfg.to_dict()
    before = {**UNRECORDED_VALUES, **before}
    return {k: (before.get(k), v) for k, v in now.items()
            if k not in RESUME_FREE and k in before and before.get(k) != v}


def check_resume_target(cfg: TrainConfig) -> None:
    """``--resume`` into a directory that holds no run (no ``run.json``) is refused with a sentence."""
    if not cfg.resume:
        return
    path = Path(cfg.output_dir)
    if (path / "run.json").is_file():
        return
    if not path.exists():
        state = "does not exist"
    elif not any(p.name != ".pact.lock" for p in path.iterdir()):
        state = "is empty"
    elif (path / "checkpoints").is_dir():
        state = "holds checkpoints but no run.json (the record of the run's config and inputs)"
    else:
        state = "holds no run.json"
    raise ConfigError(f"--resume: output_dir={cfg.output_dir} {state}, so there is no run to continue; check the "
                      "path, or start a new run without --resume")


def lock_run_dir(cfg: TrainConfig) -> DirectoryLock:
    """The run directory's writer lock, taken (creating ``output_dir``); refuses while another run holds it."""
    return DirectoryLock(cfg.output_dir, f"output_dir={cfg.output_dir}",
                         "wait for that run to finish, or choose another output_dir").acquire()


def config_digest(cfg: TrainConfig) -> str:
    """SHA-256 of the config's keys that define the experiment (all but :data:`RESUME_FREE`)."""
    return json_digest({k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE})


def run_identity(cfg: TrainConfig, *, tokens, tokenizer_sha256: str, data_sha256: str, model_sha256: str,
                 base_model_sha256: str | None, world_size: int) -> dict:
    """What defines the run, by content: ``run.json``'s ``identity`` (see the module doc)."""
    return {"safety_tokens": tokens.digest() if tokens is not None else None,
            "k": len(tokens.ids) if tokens is not None else 0,
            "tokenizer": tokenizer_sha256, "data": data_sha256, "model": model_sha256,
            "base_model": base_model_sha256, "config": config_digest(cfg), "world_size": world_size,
            "global_batch": cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size}


def _short(value):
    return value[:12] if isinstance(value, str) and len(value) == 64 else value


def refuse_unless_resume_changes(cfg: TrainConfig, what: str, own: str, listed: str) -> None:
    """Raise :class:`ConfigError` for a ``--resume`` with ``what`` (the differences ``listed``) unless
    ``resume_changes=true`` accepts them; ``own``: what of the run's to resume with instead (files, settings)."""
    if not cfg.resume_changes:
        raise ConfigError(f"--resume with {what}: {listed}. Resume with the run's own {own}, or pass "
                          "resume_changes=true to continue with the new ones (recorded in run.json)")


def identity_changes(cfg: TrainConfig, before: dict, identity: dict, zero_stage: int) -> dict[str, tuple]:
    """Refuse a resume whose inputs differ from the run's (``run.json``'s ``identity``), naming each difference.

    Config keys are compared (and named) by :func:`check_run_dir`; here the
    content behind them. With ``resume_changes=true`` the differences are
    accepted and returned (recorded in ``run.json``), except a new world size
    with another global batch or under ZeRO stage 1-3, which no flag accepts.
    A ``run.json`` without an ``identity`` record is compared on its config keys alone.
    """
    old = before.get("identity") or {}
    changed = {k: (old[k], v) for k, v in identity.items() if k != "config" and k in old and old[k] != v}
    if "world_size" in changed:
        (w0, w1), (g0, g1) = changed["world_size"], (old.get("global_batch"), identity["global_batch"])
        if w1 > w0:
            raise ConfigError(f"--resume with {w1} ranks, the run had {w0}: its checkpoints hold the random states of "
                              f"{w0} ranks only; resume with {w0} ranks or fewer")
        if g0 != g1:
            keep = (g0 or 0) / (cfg.micro_batch_size * w1)
            fix = (f"gradient_accumulation_steps={int(keep)} keeps it" if keep == int(keep) and keep >= 1 else
                   "no gradient_accumulation_steps keeps it with this micro_batch_size")
            raise ConfigError(f"--resume with {w1} ranks, the run had {w0}: the global batch would change from {g0} to "
                              f"{g1} samples per step, and the steps of the run with it. Resume with {w0} ranks "
                              f"({fix})")
        if zero_stage:
            raise ConfigError(f"--resume with {w1} ranks, the run had {w0}: DeepSpeed's ZeRO-{zero_stage} optimizer "
                              f"state in its checkpoints is split over {w0} ranks; resume with {w0} ranks")
    if changed:
        refuse_unless_resume_changes(
            cfg, f"other inputs than the run in {cfg.output_dir} was made with", "files",
            "; ".join(f"{IDENTITY_NAMES.get(k, k)} ({k}: {_short(a)} -> {_short(b)})" for k, (a, b) in changed.items()))
    return changed


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
    if changes:
        refuse_unless_resume_changes(cfg, f"a config that differs from the run in {cfg.output_dir}", "settings",
                                     "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
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
