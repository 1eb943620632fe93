"""Runs PACTTrainer on the tiny setup of the driver tests; under the deepspeed launcher for two ranks.

``python tests/e2e/trl_run.py MODEL_DIR TOKENS OUT key=value ...``: the keys
are the driver's (configs/tiny.yaml and overrides) plus ``zero=2|3``; the log
history goes to ``OUT/log_history.json`` (rank 0).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def driver_samples(cfg):
    """The samples the driver trains on for ``cfg``, in its order: the seeded mixture with each sample whose
    prompt fills max_length replaced as ``pact.training.data.load_views`` does (so n and p are kept)."""
    from pact.data.views import ViewBuilder
    from pact.models import load_tokenizer
    from pact.training.data import load_sources, load_views

    _, record, _ = load_views(cfg, ViewBuilder(load_tokenizer(cfg.model), cfg.max_length, cfg.post_bos))
    task, harmful = load_sources(cfg)  # what record["order"] indexes
    sources = {"task": task, "harmful": harmful}
    return [sources[kind][int(i)] for kind, i in (o.split(":") for o in record["order"])]


def trainer_for(model_dir, tokens, out, overrides=(), deepspeed=None, lora=True, callbacks=None, dtype="float32",
                **trainer_args):
    """A PACTTrainer configured as the driver is by configs/tiny.yaml + ``overrides``.

    ``lora=False``: full fine-tuning, the reference a second (frozen) model. ``dtype``: the models' weights
    (``bfloat16`` with ``bf16=True``: TRL's mixed precision). ``trainer_args``: more ``PACTTrainerConfig``
    fields (they replace this function's choices, e.g. ``save_strategy``).
    """
    from datasets import Dataset
    from peft import LoraConfig

    from pact.models import load_model, load_tokenizer
    from pact.training.config import CSFT_KEYS, load_config
    from pact.training.schedule import hf_scheduler_type
    from pact.trl import PACTTrainer, PACTTrainerConfig

    cfg = load_config(str(REPO / "configs" / "tiny.yaml"),
                      [f"model={model_dir}", f"safety_tokens={tokens}", "deepspeed=null", *overrides])
    samples = driver_samples(cfg)
    dataset = Dataset.from_dict({"prompt": [s.prompt for s in samples], "completion": [s.response for s in samples],
                                 "harmful": [s.harmful for s in samples]})
    method = cfg.method
    pact_keys = dict(variant=cfg.variant, **cfg.loss.loss_overrides()) if method == "pact" else {}
    fields = dict(
        output_dir=str(out), safety_tokens=str(tokens), method=method, preset=cfg.preset, **pact_keys,
        **{k: getattr(cfg, k) for k in CSFT_KEYS},
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_betas[0],
        adam_beta2=cfg.adam_betas[1], lr_scheduler_type=hf_scheduler_type(cfg.lr_scheduler, cfg.warmup_steps),
        warmup_steps=cfg.warmup_steps, max_length=cfg.max_length, seed=cfg.seed,
        ref_cache=cfg.ref_cache, fused_linear=cfg.fused_linear, loss_normalization=cfg.loss_normalization,
        bf16=False, gradient_checkpointing=False,
        logging_steps=1, report_to=[], save_strategy="no", deepspeed=deepspeed, disable_tqdm=True,
        accelerator_config={"use_configured_state": True} if deepspeed else None)
    args = PACTTrainerConfig(**{**fields, **trainer_args})
    model = load_model(str(model_dir), dtype=dtype)
    if not lora:
        return PACTTrainer(model.requires_grad_(True), args=args, train_dataset=dataset, callbacks=callbacks,
                           processing_class=load_tokenizer(str(model_dir)),
                           ref_model=load_model(str(model_dir), dtype=dtype))
    return PACTTrainer(model, args=args, train_dataset=dataset, processing_class=load_tokenizer(str(model_dir)),
                       callbacks=callbacks,
                       peft_config=LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                              target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))


def main(argv):
    model_dir, tokens, out, *overrides = [a for a in argv if not a.startswith("--local_rank")]
    zero = [o for o in overrides if o.startswith("zero=")]
    overrides = [o for o in overrides if not o.startswith("zero=")]
    deepspeed = str(REPO / "configs" / "deepspeed" / f"zero{zero[0][5:]}.json") if zero else None
    if deepspeed:
        # Without a GPU, accelerate does not start DeepSpeed by itself (it falls back to one process):
        # configure its state for DeepSpeed over gloo first, as the Trainer's use_configured_state allows.
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")
    trainer = trainer_for(model_dir, tokens, out, overrides, deepspeed)
    trainer.train()
    if trainer.is_world_process_zero():
        Path(out, "log_history.json").write_text(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1:])
