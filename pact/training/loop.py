"""One training run of the driver (``pact train``, ``deepspeed pact/train.py``), top to bottom.

:func:`train`: check the run directory and the config's inputs (before any model is loaded), build the
data and the run's identity (:func:`prepare`), load the model, start DeepSpeed and set up the reference
(:func:`start`), restore a checkpoint and write ``run.json`` (:func:`record`), then :func:`run_steps`:
per micro-batch the policy forward at the loss rows, the reference at S, the method's loss and backward;
per step the optimizer step, the log line and the checkpoint; and :func:`finish` exports the final weights.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_files import write_text_atomic
from ..data.collator import PACTCollator
from ..data.views import ViewBuilder
from ..fingerprint import tokenization_digest, weights_digest, write_base_record
from ..methods import build_method
from ..models import load_tokenizer
from ..identify import SafetyTokens
from .checkpoint import export_final, latest_checkpoint, load_checkpoint, resume_point, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import StepSampler, dataset_digest, load_views
from .deepspeed_config import deepspeed_config
from .engine import (agreed, build_engine, build_model, build_reference, check_deepspeed_config, check_optimizer_keys,
                     init_distributed)
from .faults import fault_point
from .metrics import StepMetrics, TrainLogger
from .precision import undo_state_allocation_step
from .run_dir import (apply_resume_changes, check_resume_target, check_run_dir, check_writable, clear_run,
                      identity_changes, lock_run_dir, previous_config, run_identity, run_record)
from .schedule import lr_lambda
from .setup import check_base_model, load_safety_tokens, model_config, model_vocab_size
from .step import backward_scale, micro_batch_loss
from .write_errors import writing


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last checkpoint."""


@dataclass
class Run:
    """What one run's steps need, built by :func:`prepare` and :func:`start`."""

    cfg: TrainConfig
    tokens: SafetyTokens | None
    rank: int
    world: int
    device: object
    views: list
    mixture: dict
    collator: PACTCollator
    sampler: StepSampler
    total_steps: int
    ds_config: dict
    identity: dict
    method: object = None
    engine: object = None
    reference: object = None
    notes: list = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir)


def driver_safety_tokens(cfg: TrainConfig, tokenizer) -> SafetyTokens | None:
    """The run's safety tokens, checked against the model's vocabulary and tokenizer (a ConfigError)."""
    if not cfg.safety_tokens:
        return None
    try:
        return load_safety_tokens(cfg.safety_tokens, model_vocab_size(cfg.model, cfg.gguf_file, cfg.trust_remote_code),
                                  tokenizer)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def prepare(cfg: TrainConfig) -> Run:
    """Every check that needs no weights, the process group, the data and the run's identity."""
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    tokens = driver_safety_tokens(cfg, tokenizer)  # config errors stop here, before any model is loaded
    check_base_model(cfg)
    rank, world, device = init_distributed(cfg.collective_timeout)
    views, mixture, notes = load_views(cfg, ViewBuilder(tokenizer, cfg.max_length, cfg.post_bos))
    for note in notes if rank == 0 else []:
        print(f"pact train: {note}", file=sys.stderr)
    sampler = StepSampler(len(views), cfg.micro_batch_size, cfg.gradient_accumulation_steps, world, rank, cfg.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(sampler.too_few_samples("micro_batch_size x gradient_accumulation_steps x ranks"))
    total_steps = cfg.epochs * sampler.steps_per_epoch
    total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    ds_config = deepspeed_config(cfg, world)  # batch-size conflicts are refused here, before run.json
    ds_config["zero_allow_untested_optimizer"] = True
    check_deepspeed_config(ds_config)
    check_optimizer_keys(cfg)
    identity = agreed(rank, lambda: run_identity(
        cfg, tokens=tokens, tokenizer_sha256=tokenization_digest(tokenizer), data_sha256=dataset_digest(views),
        model_sha256=weights_digest(cfg.model, cfg.gguf_file),
        base_model_sha256=weights_digest(cfg.base_model, cfg.base_gguf_file) if cfg.base_model else None,
        world_size=world))
    if cfg.resume:  # the run's inputs by content: a file replaced at the same path is named, not used silently
        agreed(rank, lambda: identity_changes(cfg, previous_config(cfg.output_dir) or {}, identity,
                                              ds_config["zero_optimization"]["stage"]))
    return Run(cfg, tokens, rank, world, device, views, mixture, PACTCollator(tokenizer.pad_token_id), sampler,
               total_steps, ds_config, identity)


def start(run: Run) -> None:
    """The method, the model and its DeepSpeed engine, and the reference."""
    cfg, tokens = run.cfg, run.tokens
    run.method = build_method(cfg, tokens, backend=cfg.backend)
    row_model = build_model(cfg, tokens.ids_tensor() if tokens else None)
    run.method.setup(row_model)  # e.g. AsFT pairs the LoRA factors with their alignment matrices
    schedule = lr_lambda(cfg.lr_scheduler, cfg.warmup_steps, run.total_steps)  # transformers' factors
    run.engine = build_engine(cfg, row_model, run.ds_config, schedule)
    undo_state_allocation_step(run.engine)  # bf16 without ZeRO: Adam's steps counted as float32 counts them
    run.method.place(run.device)  # the safety ids and weights move to the model's device once
    run.reference = build_reference(cfg, run.method, run.engine, run.ds_config, tokens, run.views, run.collator,
                                    run.rank, run.world, run.device)


def record(run: Run, ckpt, changes: dict, notes: list) -> int:
    """Restore ``ckpt`` (the step to start from) and, on rank 0, write ``run.json`` and ``mixture.json``."""
    cfg, step = run.cfg, 0
    if ckpt is not None:
        step = load_checkpoint(run.engine, ckpt, run.rank)["step"]
        notes.append(f"resumed from {ckpt} at step {step}")
        applied = apply_resume_changes(run.engine, cfg, changes)
        if applied:
            notes.append(f"changed from the run's config, applied from step {step + 1}: {', '.join(applied)}")
    for note in notes if run.rank == 0 else []:
        print(f"pact train: {note}", file=sys.stderr)
    if run.rank != 0:
        return step
    if cfg.overwrite and not cfg.resume:  # every check passed and the model, engine and reference stand
        clear_run(cfg.output_dir)
    stage = run.ds_config["zero_optimization"]["stage"]
    accepted = dict(changes, **{f"identity.{k}": v for k, v in (identity_changes(
        cfg, previous_config(cfg.output_dir) or {}, run.identity, stage) if cfg.resume else {}).items()})
    loss = cfg.loss_config() if cfg.pact_variant else None
    write_text_atomic(run.run_dir / "run.json", json.dumps(run_record(dict(
        cfg.to_dict(), k=len(run.tokens.ids) if run.tokens else 0, lambda_kl=loss.lambda_kl if loss else None,
        decay_start=loss.decay_start if loss else None, world_size=run.world, samples=len(run.views),
        num_harmful=run.mixture["num_harmful"], replaced=len(run.mixture.get("replaced", {})),
        total_steps=run.total_steps, identity=run.identity), cfg.output_dir, accepted), indent=2))
    write_text_atomic(run.run_dir / "mixture.json", json.dumps(run.mixture))
    return step


def kept_files(run_dir: Path) -> str:
    """What a failed write leaves to resume from, in words."""
    last = latest_checkpoint(run_dir)
    return (f"the last intact checkpoint {last} and train_log.jsonl up to it" if last else
            "no checkpoint yet (run.json and train_log.jsonl)")


def one_step(run: Run, step: int, metrics: StepMetrics) -> list:
    """The micro-batches of optimizer step ``step`` (forward, loss, backward, step); their sample ids."""
    cfg, engine, sampler, views = run.cfg, run.engine, run.sampler, run.views
    epoch, in_epoch = divmod(step, sampler.steps_per_epoch)
    micro_batches = sampler.micro_batches(epoch, in_epoch)
    block = sampler.permutation(epoch)[in_epoch * sampler.block:(in_epoch + 1) * sampler.block]
    step_rows = sum(views[i].num_answer for i in block)  # labelled rows of the step on all ranks
    for micro in micro_batches:
        batch = run.collator([(i, views[i]) for i in micro]).to(run.device)
        with micro_batch_loss(cfg, engine, run.method, run.reference, batch, metrics) as result:
            engine.backward(result.loss * backward_scale(cfg.loss_normalization, batch.labels.numel(), step_rows,
                                                         cfg.gradient_accumulation_steps, run.world))
            fault_point("step")
        engine.step()
        metrics.add_loss(result.loss, result, batch)
    return micro_batches


def run_steps(run: Run, step: int) -> int:
    """The loop: one optimizer step, its log line and its checkpoint at a time; returns the last step."""
    from tqdm import tqdm

    cfg, run_dir = run.cfg, run.run_dir
    logger = TrainLogger(run_dir, run.rank == 0, resume_step=step)
    safety_ids = run.tokens.ids_tensor().to(run.device) if run.tokens else None
    progress = tqdm(total=run.total_steps, initial=step, desc=f"train {run.method.name}", disable=run.rank != 0)
    sample_log = (run_dir / f"samples-rank{run.rank}.jsonl").open("a") if cfg.record_samples else None
    run.engine.train()
    while step < run.total_steps:
        started, started_cpu = time.perf_counter(), time.process_time()
        metrics = StepMetrics(safety_ids, run.device, cfg.loss_normalization)
        lr = run.engine.get_lr()[0]  # the rate this step runs at (logged with it, as the HF Trainer does)
        micro_batches = one_step(run, step, metrics)
        if sample_log is not None:
            sample_log.write(json.dumps({"step": step + 1, "samples": [i for mb in micro_batches for i in mb]}) + "\n")
        epoch = step // run.sampler.steps_per_epoch
        step += 1
        line = dict(step=step, epoch=epoch, lr=lr, **metrics.reduce(),
                    seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - started_cpu)
        if not math.isfinite(line["loss"]):  # summed over micro-batches and ranks: no sync before backward
            raise NonFiniteLossError(f"non-finite loss at step {step} (epoch {epoch}); stopped before logging or "
                                     f"saving it. Last checkpoint kept: {latest_checkpoint(run_dir) or 'none'}. "
                                     "Lower learning_rate or check the data.")
        if step % cfg.log_every == 0 or step == run.total_steps:
            logger.log(line)
        fault_point("logged")
        progress.update(1)
        progress.set_postfix(loss=f"{line['loss']:.4f}", kl=f"{line['kl']:.4f}")
        if step == run.total_steps or (cfg.save_every and step % cfg.save_every == 0):
            with writing(f"the checkpoint of step {step}", run_dir / "checkpoints", lambda: kept_files(run_dir),
                         partial=run_dir / "checkpoints" / f"step-{step:06d}.tmp"):
                save_checkpoint(run.engine, run_dir, step, {"step": step, "epoch": epoch,
                                                            "total_steps": run.total_steps},
                                run.rank, keep=cfg.keep_checkpoints)
        if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
            break  # an interruption: no checkpoint beyond the last scheduled one
    progress.close()
    logger.close()
    if sample_log is not None:
        sample_log.close()
    return step


def finish(run: Run) -> None:
    """The final weights (and, for an adapter, the base model it belongs to); the method's last word."""
    cfg, run_dir = run.cfg, run.run_dir
    with writing("the final weights", run_dir / "final", lambda: kept_files(run_dir), partial=run_dir / "final.tmp"):
        final = export_final(run.engine, run_dir, run.rank)
    if run.rank == 0 and cfg.lora:  # which base model the adapter belongs to (checked by pact eval --adapter)
        write_base_record(final, cfg.model, cfg.gguf_file,
                          model_config("model", cfg.model, cfg.gguf_file, cfg.trust_remote_code))
    run.method.finish(run_dir, run.rank)  # e.g. SafeLoRA projects the exported adapter


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training run; returns the final trainer state."""
    check_resume_target(cfg)  # --resume needs a run; nothing is created before this
    check_writable(cfg.output_dir)
    run_lock = lock_run_dir(cfg) if int(os.environ.get("RANK", "0")) == 0 else None  # held until train() returns
    changes = check_run_dir(cfg)  # a run in output_dir is never silently reused
    ckpt, notes = resume_point(Path(cfg.output_dir)) if cfg.resume else (None, [])
    run = prepare(cfg)
    start(run)
    step = run_steps(run, record(run, ckpt, changes, notes))
    if step == run.total_steps:
        finish(run)
    del run_lock
    return {"step": step, "total_steps": run.total_steps, "run_dir": str(run.run_dir)}
