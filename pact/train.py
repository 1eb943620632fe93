"""PACT fine-tuning: ``deepspeed pact/train.py --config CONFIG.yaml [key=value ...] [--resume]``.

Also ``pact train ...`` (one process) and ``python pact/train.py ...``. The
steps, top to bottom: check the config (before any model is loaded), build
the data, load the model (LoRA or full), start DeepSpeed, set up the
reference (adapter off, a frozen engine, or a disk cache), then the loop:
policy forward at the loss rows, reference forward at S, the method's loss,
backward, step, log, checkpoint.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: keep pact/ itself off the import path
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pact.atomic_files import write_text_atomic
from pact.data.collator import PACTCollator
from pact.data.sources import PromptSourceError
from pact.data.views import ViewBuilder
from pact.fingerprint import ARCHITECTURE_KEYS, weights_digest, write_base_record
from pact.methods import build_method
from pact.models import ModelLoadError, load_model, load_model_config, load_tokenizer, resolve_model_ref
from pact.reference import OnlineReference, ReferenceCache, RowModel, cache_fingerprint, fill_reference_cache
from pact.safety_tokens import SafetyTokens
from pact.training.checkpoint import (CheckpointError, export_final, latest_checkpoint, load_checkpoint,
                                      resume_point, save_checkpoint)
from pact.training.config import ConfigError, TrainConfig, deepspeed_config, load_config
from pact.training.data import StepSampler, dataset_digest, load_views
from pact.training.faults import fault_point
from pact.training.metrics import StepMetrics, TrainLogger
from pact.training.run_dir import apply_resume_changes, check_run_dir, clear_run, run_record
from pact.training.schedule import lr_lambda
from pact.training.step import micro_batch_loss


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last checkpoint."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="pact train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete the run already in output_dir")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.lambda_kl=1 lora_r=16")
    return parser.parse_intermixed_args(argv)


def model_config(key: str, name: str, gguf_file: str | None, trust_remote_code: bool = False):
    """The ``transformers`` config of the run's model ``key`` (``model``, ``base_model``), without its weights."""
    try:
        return load_model_config(resolve_model_ref(name, gguf_file), trust_remote_code=trust_remote_code)
    except Exception as e:
        raise ConfigError(f"cannot read the config of {key}={name!r}: {e}") from e


def model_vocab_size(cfg: TrainConfig) -> int:
    """The model's output vocabulary from its config alone (no weights loaded)."""
    return int(model_config("model", cfg.model, cfg.gguf_file, cfg.trust_remote_code).vocab_size)


def check_base_model(cfg: TrainConfig) -> None:
    """``base_model`` (safe_lora, asft) has ``model``'s architecture, from the two configs alone (no weights)."""
    if cfg.method not in ("safe_lora", "asft"):
        return
    configs = [model_config("model", cfg.model, cfg.gguf_file, cfg.trust_remote_code),
               model_config("base_model", cfg.base_model, cfg.base_gguf_file, cfg.trust_remote_code)]
    differ = [(k, getattr(configs[0], k, None), getattr(configs[1], k, None)) for k in ARCHITECTURE_KEYS
              if getattr(configs[0], k, None) != getattr(configs[1], k, None)]
    if differ:
        raise ConfigError(f"base_model={cfg.base_model!r} is not the architecture of model={cfg.model!r} "
                          f"({', '.join(f'{k}: {a} vs {b}' for k, a, b in differ)}); method={cfg.method} needs "
                          "the unaligned model the aligned one was trained from")


def load_safety_tokens(cfg: TrainConfig) -> SafetyTokens | None:
    """The safety set, checked against the model's vocabulary before any weights are loaded."""
    if not cfg.safety_tokens:
        return None
    try:
        return SafetyTokens.load(cfg.safety_tokens, vocab_size=model_vocab_size(cfg))
    except ValueError as e:
        raise ConfigError(str(e)) from e


def init_distributed():
    """Start the process group (gloo without CUDA); returns ``(rank, world, device)``."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:  # a plain `python pact/train.py` / `pact train`: one rank
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    backend = get_accelerator().communication_backend_name() if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(get_accelerator().device_name(local_rank)) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def build_model(cfg: TrainConfig, safety_ids: torch.Tensor | None) -> RowModel:
    """The trainable model: the causal LM with a LoRA adapter (default) or all weights trainable."""
    model = load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    model.train()
    torch.manual_seed(cfg.seed)  # identical LoRA initialisation on every rank
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))
    else:
        model.requires_grad_(True)
    row_model = RowModel(model)
    if safety_ids is not None:
        row_model.set_safety_ids(safety_ids)
    return row_model


def build_reference(cfg, method, engine, ds_config, tokens, views, collator, rank, world, device):
    """The reference for the run: adapter-off (LoRA), a frozen DeepSpeed engine (full), or the disk cache."""
    import deepspeed

    if not method.needs_reference:
        return None
    if cfg.lora:
        online = OnlineReference(engine)
    else:
        ref_model = RowModel(load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=cfg.dtype,
                                        trust_remote_code=cfg.trust_remote_code))
        if tokens is not None:
            ref_model.set_safety_ids(tokens.ids_tensor())
        stage = ds_config["zero_optimization"]["stage"]
        ref_config = dict(ds_config, zero_optimization={"stage": 3 if stage == 3 else 0})
        ref_engine, *_ = deepspeed.initialize(model=ref_model, config=ref_config)
        ref_engine.eval()
        online = OnlineReference(ref_engine, separate_head=True)
    if not cfg.ref_cache:
        return online
    fingerprint = cache_fingerprint(weights_digest(cfg.model, cfg.gguf_file), tokens.ids, dataset_digest(views))
    cache = ReferenceCache(cfg.ref_cache, [v.num_answer for v in views], len(tokens.ids), fingerprint)
    status = cache.status()
    if status == "valid":
        return cache
    if status != "missing":
        raise ConfigError(status)
    fill_reference_cache(cache, online, views, collator, cfg.micro_batch_size, rank, world, device)
    return cache


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training run; returns the final trainer state."""
    import deepspeed
    from tqdm import tqdm

    changes = check_run_dir(cfg)  # a run in output_dir is never silently reused
    ckpt, resume_notes = resume_point(Path(cfg.output_dir)) if cfg.resume else (None, [])
    tokens = load_safety_tokens(cfg)  # config errors stop here, before any model is loaded
    check_base_model(cfg)
    rank, world, device = init_distributed()
    run_dir = Path(cfg.output_dir)
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    views, mixture_record, notes = load_views(cfg, ViewBuilder(tokenizer, cfg.max_length, cfg.post_bos))
    for note in notes if rank == 0 else []:
        print(f"pact train: {note}", file=sys.stderr)
    collator = PACTCollator(tokenizer.pad_token_id)
    sampler = StepSampler(len(views), cfg.micro_batch_size, cfg.gradient_accumulation_steps, world, rank, cfg.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"{len(views)} samples do not fill one step of {sampler.block} "
                          "(micro_batch_size x gradient_accumulation_steps x ranks)")
    total_steps = cfg.epochs * sampler.steps_per_epoch
    total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    if rank == 0:
        if cfg.overwrite and not cfg.resume:
            clear_run(cfg.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "run.json", json.dumps(run_record(dict(
            cfg.to_dict(), k=len(tokens.ids) if tokens else 0, lambda_kl=cfg.loss_config().lambda_kl,
            decay_start=cfg.loss_config().decay_start, world_size=world, samples=len(views),
            replaced=len(mixture_record.get("replaced", {})), total_steps=total_steps), cfg.output_dir, changes),
            indent=2))
        write_text_atomic(run_dir / "mixture.json", json.dumps(mixture_record))

    method = build_method(cfg, tokens, backend=cfg.backend)
    row_model = build_model(cfg, tokens.ids_tensor() if tokens else None)
    method.setup(row_model)  # e.g. AsFT pairs the LoRA factors with their alignment matrices
    ds_config = deepspeed_config(cfg, world)
    ds_config["zero_allow_untested_optimizer"] = True
    trainable = [p for p in row_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                                  weight_decay=cfg.weight_decay)
    schedule = lr_lambda(cfg.lr_scheduler, cfg.warmup_steps, total_steps)  # transformers' factors
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(model=row_model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    method.place(device)  # the safety ids and weights move to the model's device once
    reference = build_reference(cfg, method, engine, ds_config, tokens, views, collator, rank, world, device)

    step = 0
    if ckpt is not None:
        step = load_checkpoint(engine, ckpt, rank)["step"]
        resume_notes.append(f"resumed from {ckpt} at step {step}")
        applied = apply_resume_changes(engine, cfg, changes)
        if applied:
            resume_notes.append(f"changed from the run's config, applied from step {step + 1}: {', '.join(applied)}")
    for note in resume_notes if rank == 0 else []:
        print(f"pact train: {note}", file=sys.stderr)
    logger = TrainLogger(run_dir, rank == 0, resume_step=step)
    safety_ids = tokens.ids_tensor().to(device) if tokens else None
    progress = tqdm(total=total_steps, initial=step, desc=f"train {method.name}", disable=rank != 0)
    sample_log = (run_dir / f"samples-rank{rank}.jsonl").open("a") if cfg.record_samples else None
    engine.train()
    while step < total_steps:
        started, started_cpu = time.perf_counter(), time.process_time()
        epoch, in_epoch = divmod(step, sampler.steps_per_epoch)
        metrics = StepMetrics(safety_ids, device)
        lr = engine.get_lr()[0]  # the rate this step runs at (logged with it, as the HF Trainer does)
        micro_batches = sampler.micro_batches(epoch, in_epoch)
        for micro in micro_batches:
            batch = collator([(i, views[i]) for i in micro]).to(device)
            with micro_batch_loss(cfg, engine, method, reference, batch, metrics) as result:
                engine.backward(result.loss)
                fault_point("step")
            engine.step()
            metrics.add_loss(result.loss, result, batch)
        if sample_log is not None:
            sample_log.write(json.dumps({"step": step + 1, "samples": [i for mb in micro_batches for i in mb]}) + "\n")
        step += 1
        record = dict(step=step, epoch=epoch, lr=lr, **metrics.reduce(),
                      seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu)
        if not math.isfinite(record["loss"]):  # summed over micro-batches and ranks: no sync before backward
            raise NonFiniteLossError(f"non-finite loss at step {step} (epoch {epoch}); stopped before logging or "
                                     f"saving it. Last checkpoint kept: {latest_checkpoint(run_dir) or 'none'}. "
                                     "Lower learning_rate or check the data.")
        if step % cfg.log_every == 0 or step == total_steps:
            logger.log(record)
        fault_point("logged")
        progress.update(1)
        progress.set_postfix(loss=f"{record['loss']:.4f}", kl=f"{record['kl']:.4f}")
        if step == total_steps or (cfg.save_every and step % cfg.save_every == 0):
            save_checkpoint(engine, run_dir, step, {"step": step, "epoch": epoch, "total_steps": total_steps},
                            rank, keep=cfg.keep_checkpoints)
        if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
            break  # an interruption: no checkpoint beyond the last scheduled one
    progress.close()
    logger.close()
    if step == total_steps:
        final = export_final(engine, run_dir, rank)
        if rank == 0 and cfg.lora:  # which base model the adapter belongs to (checked by pact eval --adapter)
            write_base_record(final, cfg.model, cfg.gguf_file,
                              model_config("model", cfg.model, cfg.gguf_file, cfg.trust_remote_code))
        method.finish(run_dir, rank)  # e.g. SafeLoRA projects the exported adapter
    if sample_log is not None:
        sample_log.close()
    return {"step": step, "total_steps": total_steps, "run_dir": str(run_dir)}


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides) + (["resume=true"] if args.resume else []) + (
        ["overwrite=true"] if args.overwrite else [])
    try:
        cfg = load_config(args.config, overrides)
        train(cfg)
    except (ConfigError, NonFiniteLossError, CheckpointError, ModelLoadError, PromptSourceError) as e:
        print(f"pact train: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
