"""The PACTTrainer's run identity and resume point: the driver's guarantees for ``Trainer`` checkpoints.

Each ``checkpoint-N`` the trainer saves gets ``pact_identity.json`` (what
defines the run, by content: :func:`trainer_identity`) and the driver's
``manifest.json`` of every file's size and SHA-256
(:func:`pact.training.checkpoint.write_manifest`), written last.
``train(resume_from_checkpoint=True)`` starts from the newest checkpoint whose
files match their manifest (:func:`intact_checkpoint`), not from the highest
number, and both forms of resume refuse a run whose inputs differ
(:func:`check_trainer_resume`) unless ``resume_changes=True``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from ..digests import json_digest
from ..training.checkpoint import verify_checkpoint
from ..training.config import CSFT_KEYS, LOSS_KEYS, ConfigError
from ..training.run_dir import identity_changes

IDENTITY_FILE = "pact_identity.json"
#: The trainer's keys that define the experiment (compared by name on resume).
CONFIG_KEYS = ("method", "preset", "variant", *LOSS_KEYS, *CSFT_KEYS, "post_bos", "fused_linear", "learning_rate",
               "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_type", "warmup_steps",
               "warmup_ratio", "max_grad_norm", "seed", "data_seed", "max_length", "per_device_train_batch_size",
               "gradient_accumulation_steps", "loss_normalization", "num_train_epochs", "max_steps", "optim", "bf16",
               "fp16", "dataloader_drop_last", "average_tokens_across_devices", "lr_scheduler_kwargs")


def trainer_config(args, adapter: dict | None = None) -> dict:
    """The experiment-defining keys of a ``PACTTrainerConfig``, as JSON values, and the fields of the model's
    ``adapter`` configs (peft's ``{name: LoraConfig.to_dict()}``) as ``adapter.NAME.FIELD`` (but the peft version)."""
    def plain(value):
        return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else value

    keys = {k: getattr(args, k, None) for k in CONFIG_KEYS}
    for name, cfg in sorted((adapter or {}).items()):
        keys.update({f"adapter.{name}.{k}": plain(v) for k, v in sorted(cfg.items()) if k != "peft_version"})
    return json.loads(json.dumps(keys, default=str))


def trainer_identity(args, *, tokens, tokenizer_sha256: str, data_sha256: str, model_sha256: str,
                     world_size: int, adapter: dict | None = None) -> dict:
    """``pact_identity.json``: the driver's ``identity`` record plus the named config keys (``adapter``: the
    policy's peft configs, ``{name: config dict}``)."""
    config = trainer_config(args, adapter)
    return {"safety_tokens": tokens.digest(), "k": len(tokens.ids), "tokenizer": tokenizer_sha256,
            "data": data_sha256, "model": model_sha256, "config": json_digest(config), "world_size": world_size,
            "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
            "config_keys": config}


def check_trainer_resume(checkpoint: Path, identity: dict, args, zero_stage: int) -> None:
    """Refuse (ValueError naming each difference) a resume from ``checkpoint`` with other inputs or keys."""
    path = Path(checkpoint) / IDENTITY_FILE
    if not path.is_file():
        return  # resume_changes=True accepted a checkpoint without an identity (PACTTrainer.train)
    before = json.loads(path.read_text())
    old_keys, new_keys = before.get("config_keys", {}), identity["config_keys"]
    changed = {k: (old_keys.get(k), v) for k, v in new_keys.items() if k in old_keys and old_keys[k] != v}
    if changed and not args.resume_changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"resume_from_checkpoint={checkpoint}: the config differs from the checkpoint's run: {listed}. "
                         "Resume with the run's own settings, or set resume_changes=True to continue with the new ones")
    view = SimpleNamespace(resume_changes=args.resume_changes, micro_batch_size=args.per_device_train_batch_size,
                           output_dir=str(Path(checkpoint).parent))
    try:
        identity_changes(view, {"identity": before}, {k: v for k, v in identity.items() if k != "config_keys"},
                         zero_stage)
    except ConfigError as e:
        raise ValueError(f"resume_from_checkpoint={checkpoint}: {e}".replace("pass resume_changes=true",
                                                                              "set resume_changes=True")) from None


def _step(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def intact_checkpoint(output_dir: str | Path) -> Path:
    """The newest ``checkpoint-N`` of ``output_dir`` whose files match their manifest.

    A checkpoint without a manifest (its write was cut short) or with a file
    that differs from it is skipped; ValueError (naming each) when
    checkpoints exist and none is intact, or when there is none.
    """
    root = Path(output_dir)
    found = sorted((p for p in root.glob("checkpoint-*") if p.is_dir() and _step(p) >= 0), key=_step, reverse=True)
    if not found:
        raise ValueError(f"resume_from_checkpoint=True: {root} holds no checkpoint-N directory, so there is nothing "
                         "to resume; check output_dir, or train without resume_from_checkpoint")
    skipped = []
    for path in found:
        problem = verify_checkpoint(path, step_key="global_step")
        if problem is None:
            return path
        skipped.append(problem)
    raise ValueError(f"resume_from_checkpoint=True: no intact checkpoint in {root} ({'; '.join(skipped)}); refusing "
                     "to restart from step 0 over them")
