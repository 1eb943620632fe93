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
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pact.atomic_files import write_text_atomic
from pact.data.collator import PACTCollator
from pact.data.sources import PromptSourceError
from pact.data.views import ViewBuilder
from pact.fingerprint import ARCHITECTURE_KEYS, tokenization_digest, weights_digest, write_base_record
from pact.locks import DirectoryLockedError
from pact.methods import build_method
from pact.models import ModelLoadError, load_model, load_model_config, load_tokenizer, resolve_model_ref
from pact.model_rows import RowModel
from pact.reference import (OnlineReference, ReferenceCache, ReferenceCacheBusyError, cache_fingerprint,
                            fill_reference_cache)
from pact.identify import SafetyTokens
from pact.training.checkpoint import (CheckpointError, export_final, latest_checkpoint, load_checkpoint,
                                      resume_point, save_checkpoint)
from pact.training.config import ConfigError, TrainConfig, deepspeed_config, load_config
from pact.training.deepspeed_shm import unlink_shm_buffer
from pact.training.data import StepSampler, dataset_digest, load_views
from pact.training.faults import fault_point
from pact.training.metrics import StepMetrics, TrainLogger
from pact.training.launch import check_launch_environment, describe_collective_failure
from pact.training.precision import undo_state_allocation_step
from pact.training.run_dir import (apply_resume_changes, check_resume_target, check_run_dir, check_writable, clear_run,
                                   identity_changes, lock_run_dir, previous_config, run_identity, run_record)
from pact.training.schedule import lr_lambda
from pact.training.step import backward_scale, micro_batch_loss
from pact.training.write_errors import WriteFailedError, writing


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


def load_safety_tokens(cfg: TrainConfig, tokenizer=None) -> SafetyTokens | None:
    """The safety set, checked against the model's vocabulary and tokenizer before any weights are loaded."""
    if not cfg.safety_tokens:
        return None
    try:
        return SafetyTokens.load(cfg.safety_tokens, vocab_size=model_vocab_size(cfg), tokenizer=tokenizer)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def init_distributed(timeout_s: int = 300):
    """Start the process group (gloo without CUDA); returns ``(rank, world, device)``.

    ``timeout_s``: how long a collective (and the start-up rendezvous) waits
    for the other ranks before it fails (torch's default is 30 minutes).
    """
    from datetime import timedelta

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:  # a plain `python pact/train.py` / `pact train`: one rank
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    backend = get_accelerator().communication_backend_name() if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
    unlink_shm_buffer(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
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
    fingerprint = cache_fingerprint(weights_digest(cfg.model, cfg.gguf_file), tokens.ids, dataset_digest(views),
                                    compute_dtype=str(cfg.dtype))
    cache = ReferenceCache(cfg.ref_cache, [v.num_answer for v in views], len(tokens.ids), fingerprint)
    status = cache.status()
    if status == "valid":
        return cache
    if status != "missing":
        raise ConfigError(status)
    try:
        fill_reference_cache(cache, online, views, collator, cfg.micro_batch_size, rank, world, device)
    except (ValueError, ReferenceCacheBusyError) as e:  # another run filled it for other inputs, or fills it now
        raise ConfigError(f"ref_cache={cfg.ref_cache}: {e}") from None
    return cache


def check_optimizer_keys(cfg: TrainConfig) -> None:
    """AdamW's own argument checks on the run's values, before anything is written (a ConfigError naming them)."""
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                          weight_decay=cfg.weight_decay)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"learning_rate={cfg.learning_rate}, adam_betas={cfg.adam_betas}, weight_decay="
                          f"{cfg.weight_decay}: AdamW refuses them ({e})") from None


def check_deepspeed_config(ds_config: dict) -> None:
    """DeepSpeed's own parse of the run's DeepSpeed config (batch sizes, sections), as a ConfigError."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        DeepSpeedConfig(json.loads(json.dumps(ds_config)))
    except Exception as e:  # DeepSpeed raises AssertionError, ValueError, pydantic errors
        raise ConfigError(f"the DeepSpeed config is refused by DeepSpeed: {e}") from None


def agreed(rank: int, compute):
    """``compute()`` on rank 0, its ConfigError raised on every rank (no rank waits for one that stopped).

    Returns rank 0's result on rank 0 and None elsewhere.
    """
    result, error = None, None
    if rank == 0:
        try:
            result = compute()
        except ConfigError as e:
            error = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise ConfigError(error if rank == 0 else f"rank 0 stopped the run: {error}")
    return result


def kept_files(run_dir: Path) -> str:
    """What a failed write leaves to resume from, in words."""
    last = latest_checkpoint(run_dir)
    return (f"the last intact checkpoint {last} and train_log.jsonl up to it" if last else
            "no checkpoint yet (run.json and train_log.jsonl)")


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one training run; returns the final trainer state."""
    import deepspeed
    from tqdm import tqdm

    check_resume_target(cfg)  # --resume needs a run; nothing is created before this
    check_writable(cfg.output_dir)
    run_lock = lock_run_dir(cfg) if int(os.environ.get("RANK", "0")) == 0 else None  # held until train() returns
    changes = check_run_dir(cfg)  # a run in output_dir is never silently reused
    ckpt, resume_notes = resume_point(Path(cfg.output_dir)) if cfg.resume else (None, [])
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file, trust_remote_code=cfg.trust_remote_code)
    tokens = load_safety_tokens(cfg, tokenizer)  # config errors stop here, before any model is loaded
    check_base_model(cfg)
    rank, world, device = init_distributed(cfg.collective_timeout)
    run_dir = Path(cfg.output_dir)
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

    method = build_method(cfg, tokens, backend=cfg.backend)
    row_model = build_model(cfg, tokens.ids_tensor() if tokens else None)
    method.setup(row_model)  # e.g. AsFT pairs the LoRA factors with their alignment matrices
    trainable = [p for p in row_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                                  weight_decay=cfg.weight_decay)
    schedule = lr_lambda(cfg.lr_scheduler, cfg.warmup_steps, total_steps)  # transformers' factors
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(model=row_model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    undo_state_allocation_step(engine)  # bf16 without ZeRO: Adam's steps counted as float32 counts them
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
    if rank == 0:  # every check passed and the model, engine and reference stand: the run is recorded
        if cfg.overwrite and not cfg.resume:
            clear_run(cfg.output_dir)
        accepted = dict(changes, **{f"identity.{k}": v for k, v in (identity_changes(
            cfg, previous_config(cfg.output_dir) or {}, identity, ds_config["zero_optimization"]["stage"])
            if cfg.resume else {}).items()})
        write_text_atomic(run_dir / "run.json", json.dumps(run_record(dict(
            cfg.to_dict(), k=len(tokens.ids) if tokens else 0,
            lambda_kl=cfg.loss_config().lambda_kl if cfg.variant else None,
            decay_start=cfg.loss_config().decay_start if cfg.variant else None, world_size=world,
            samples=len(views), num_harmful=mixture_record["num_harmful"],
            replaced=len(mixture_record.get("replaced", {})), total_steps=total_steps, identity=identity),
            cfg.output_dir, accepted), indent=2))
        write_text_atomic(run_dir / "mixture.json", json.dumps(mixture_record))
    logger = TrainLogger(run_dir, rank == 0, resume_step=step)
    safety_ids = tokens.ids_tensor().to(device) if tokens else None
    progress = tqdm(total=total_steps, initial=step, desc=f"train {method.name}", disable=rank != 0)
    sample_log = (run_dir / f"samples-rank{rank}.jsonl").open("a") if cfg.record_samples else None
    engine.train()
    while step < total_steps:
        started, started_cpu = time.perf_counter(), time.process_time()
        epoch, in_epoch = divmod(step, sampler.steps_per_epoch)
        metrics = StepMetrics(safety_ids, device, cfg.loss_normalization)
        lr = engine.get_lr()[0]  # the rate this step runs at (logged with it, as the HF Trainer does)
        micro_batches = sampler.micro_batches(epoch, in_epoch)
        block = sampler.permutation(epoch)[in_epoch * sampler.block:(in_epoch + 1) * sampler.block]
        step_rows = sum(views[i].num_answer for i in block)  # labelled rows of the step on all ranks
        for micro in micro_batches:
            batch = collator([(i, views[i]) for i in micro]).to(device)
            with micro_batch_loss(cfg, engine, method, reference, batch, metrics) as result:
                engine.backward(result.loss * backward_scale(cfg.loss_normalization, batch.labels.numel(), step_rows,
                                                             cfg.gradient_accumulation_steps, world))
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
            with writing(f"the checkpoint of step {step}", run_dir / "checkpoints", lambda: kept_files(run_dir),
                         partial=run_dir / "checkpoints" / f"step-{step:06d}.tmp"):
                save_checkpoint(engine, run_dir, step, {"step": step, "epoch": epoch, "total_steps": total_steps},
                                rank, keep=cfg.keep_checkpoints)
        if cfg.stop_after_steps is not None and step >= cfg.stop_after_steps:
            break  # an interruption: no checkpoint beyond the last scheduled one
    progress.close()
    logger.close()
    if step == total_steps:
        with writing("the final weights", run_dir / "final", lambda: kept_files(run_dir), partial=run_dir / "final.tmp"):
            final = export_final(engine, run_dir, rank)
        if rank == 0 and cfg.lora:  # which base model the adapter belongs to (checked by pact eval --adapter)
            write_base_record(final, cfg.model, cfg.gguf_file,
                              model_config("model", cfg.model, cfg.gguf_file, cfg.trust_remote_code))
        method.finish(run_dir, rank)  # e.g. SafeLoRA projects the exported adapter
    if sample_log is not None:
        sample_log.close()
    return {"step": step, "total_steps": total_steps, "run_dir": str(run_dir)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ignore_signals() -> None:
    """While a stop is reported: a further SIGINT/SIGTERM (the launcher's, after a Ctrl-C) is dropped."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv=None, single_process: bool = False) -> int:
    """The command line; ``single_process``: ``pact train`` (one process, whatever the environment says)."""
    args = parse_args(argv)
    overrides = list(args.overrides) + (["resume=true"] if args.resume else []) + (
        ["overwrite=true"] if args.overwrite else [])
    rank = int(os.environ.get("RANK", "0") or 0)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _interrupt)  # the launcher's SIGTERM after a Ctrl-C: the same one line
    try:
        return _main(args, overrides, single_process, rank)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _main(args, overrides, single_process: bool, rank: int) -> int:
    cfg = None
    try:
        check_launch_environment(single_process, args.local_rank)
        if single_process:  # one process: the environment's distributed variables are not ours
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                os.environ.pop(key, None)
        cfg = load_config(args.config, overrides)
        train(cfg)
    except (ConfigError, NonFiniteLossError, CheckpointError, ModelLoadError, PromptSourceError,
            DirectoryLockedError, WriteFailedError) as e:
        print(f"pact train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line (rank 0), not a traceback per rank
        _ignore_signals()
        if rank == 0:
            last = latest_checkpoint(Path(cfg.output_dir)) if cfg is not None else None
            print(f"pact train: interrupted; last checkpoint kept: {last or 'none'}"
                  + ("; continue with --resume" if last else ""), file=sys.stderr)
        return 130
    except RuntimeError as e:
        _ignore_signals()
        failure = describe_collective_failure(e, cfg.collective_timeout) if cfg is not None else None
        if failure is None:
            raise
        last = latest_checkpoint(Path(cfg.output_dir))
        print(f"pact train: error (rank {rank}): {failure}. Last checkpoint kept: {last or 'none'}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
