"""The driver's model, DeepSpeed engine and reference: the process group, the trainable model (LoRA or
every weight), the optimizer's and DeepSpeed's own checks of the config, and the reference (adapter off,
a frozen engine, or the disk cache)."""
from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from ..distributed import destroy_at_exit
from ..fingerprint import weights_digest
from ..model_rows import RowModel
from ..models import load_model
from ..reference import OnlineReference
from .deepspeed_shm import unlink_shm_buffer, warn_stale_build_lock
from .schema import ConfigError
from .setup import fill_missing_cache, open_reference_cache


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
    if not torch.cuda.is_available():
        warn_stale_build_lock()
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
    unlink_shm_buffer(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    destroy_at_exit()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(get_accelerator().device_name(local_rank)) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


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


def check_optimizer_keys(cfg) -> None:
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


def build_model(cfg, safety_ids: torch.Tensor | None) -> RowModel:
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


def build_engine(cfg, row_model: RowModel, ds_config: dict, schedule):
    """The DeepSpeed engine of ``row_model`` with AdamW on its trainable weights and the ``schedule`` factors."""
    import deepspeed

    trainable = [p for p in row_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    engine, _, _, _ = deepspeed.initialize(model=row_model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine


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
    cache = open_reference_cache(cfg.ref_cache, views, tokens, weights_digest(cfg.model, cfg.gguf_file),
                                 compute_dtype=str(cfg.dtype))
    return fill_missing_cache(cache, online, views, collator, cfg.micro_batch_size, rank, world, device)
