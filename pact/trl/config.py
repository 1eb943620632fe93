"""``PACTTrainerConfig``: TRL's ``SFTConfig`` plus the PACT keys, with the paper's defaults and their sources."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig

from ..methods.build import TRAINER_METHODS
from ..training.settings import LossSettings, ObjectiveSettings, split_method


@dataclass
class PACTTrainerConfig(ObjectiveSettings, LossSettings, SFTConfig):
    r"""Configuration of [`PACTTrainer`]: every key of TRL's `SFTConfig`, plus PACT's.

    The PACT keys are the driver's own fields (`pact.training.settings`: `ObjectiveSettings` and
    `LossSettings`, one name, default, help and check each); `safety_tokens` and `pact_backend` are this
    config's.

    Parameters:
        safety_tokens (`str`):
            The `tokens.json` of `pact identify` (or of `pact.identify.identify(...).tokens.save(path)`):
            the safety set S and its weights w (SPEC §1, the paper's §3.1). Required; checked against the
            model's vocabulary before any step.
        method (`str`, *optional*, defaults to `"pact"`):
            The objective: `"pact"`, or a baseline to compare with on the same data, order and logs: `"sft"`
            (plain cross-entropy on the completion; no reference) or `"constrained_sft"` (Qi et al. 2024's
            token-wise constrained objective against the reference, keys `csft_*`). `safe_lora` and `asft`
            need the base model's weights: `pact train`.
        csft_beta, csft_bias_factor, csft_first_token_bias_factor, csft_bias_length, csft_min_weight:
            `method="constrained_sft"`'s β schedule and weight clamp, with Qi et al.'s (and the driver's)
            defaults 0.1, 20, 5, 5, 1e-3.
        preset (`str`, *optional*, defaults to `"paper"`):
            Loss defaults: `"paper"` (the paper's equations: λ = 3, τ_mass = 0.9, α = 1, β = 0, T_g = 1, T = 1;
            N = 8 and τ = 8 from the authors' code, the paper gives none) or `"authors"` (`Glresearch1/PACT`
            `finetuning_pact.py`: λ = 1, α = 2, T = 2). See SPEC §3.
        variant (`str`, *optional*, defaults to `"pact"`):
            The rung of the paper's ablation ladder (Table 5): `"full_vocab"` (alias `"full_vocab_kl"`),
            `"safety_tokens"`, `"safety_weights"`, `"response_only_ref"`, `"pact"`. A rung's name given as
            `method` (`method="full_vocab"`) means `method="pact"` with that variant, as in the driver.
        lambda_kl (`float`, *optional*):
            λ of `L = CE + λ·KL` (paper Eq. 9: 3). `None`: the preset's value. The same holds for the keys below.
        mass_threshold (`float`, *optional*):
            τ_mass of the dispersion I(q) (paper Eq. 6: 0.9).
        gate_scale (`float`, *optional*):
            α, slope of the gate sigmoid(α·(I_ft − I_post − β)) (paper Eq. 7: 1).
        gate_bias (`float`, *optional*):
            β, offset of the gate (paper Eq. 7: 0).
        gate_temperature (`float`, *optional*):
            T_g of the restricted softmaxes that feed the dispersion (paper: 1).
        decay_start (`int`, *optional*):
            N: answer positions t < N keep the full gate (authors' code: 8).
        decay_tau (`float`, *optional*):
            τ: the gate decays as exp(−(t − N)/τ) for t ≥ N (authors' code: 8).
        kl_temperature (`float`, *optional*):
            T of the KL, scaled by T² (paper: 1; authors' preset: 2).
        post_bos (`bool`, *optional*, defaults to `False`):
            Put the tokenizer's BOS before the no-prompt view's assistant header (SPEC §4; off in the authors'
            code).
        ref_cache (`str`, *optional*):
            Directory of the precomputed reference: both views' K-token logits of every training sample,
            memory-mapped (`pact.reference.ReferenceCache`, the driver's `ref_cache`). Filled before the first
            step; a cache built for other data, safety tokens or model is refused. Not for `variant="full_vocab"`.
        fused_linear (`bool`, *optional*, defaults to `True`):
            The loss from the hidden rows and the output head, chunk by chunk
            (`pact_kernels.fused_linear_pact_loss`): no `[rows, V]` logits. `False`: the policy's logits at the
            answer rows and `pact_kernels.pact_loss`. The same choice and default as the driver's `fused_linear`.
        pact_backend (`str`, *optional*, defaults to `"auto"`):
            The `pact_kernels` backend of the loss (`auto`, `torch`, `triton`, `cuda`, `naive`).
        loss_normalization (`str`, *optional*, defaults to `"tokens"`):
            How a step's loss averages its micro-batches: `"tokens"`, the mean over the labelled rows of the
            whole step (all micro-batches and processes), as `SFTTrainer` does with `num_items_in_batch`, so
            gradient accumulation is a bigger batch; `"micro_batch"`, the mean of the micro-batch means (the
            driver's option of the same name, for the baselines' public recipes).
        resume_changes (`bool`, *optional*, defaults to `False`):
            `train(resume_from_checkpoint=...)` compares what defines the run (digests of the safety tokens, the
            tokenizer, the training data and the model weights; the PACT and optimisation keys; the number of
            processes and the global batch) with the checkpoint's `pact_identity.json` and refuses a difference,
            naming each; `True` continues with the new ones (a new number of processes still needs the same
            global batch).

    Every `SFTConfig` key keeps `SFTConfig`'s default (learning rate, schedule, batch, `max_length`, `bf16`),
    so swapping `SFTConfig` for this config changes the loss only. `PACTTrainerConfig.paper(...)` gives the
    paper's optimisation instead (§4.1 and the driver's `TrainConfig`: `learning_rate` 3e-5,
    `num_train_epochs` 3, `per_device_train_batch_size` 2, `max_length` 512, `lr_scheduler_type`
    `"constant"`). A `"constant"` schedule with a warm-up becomes `"constant_with_warmup"` (the driver's
    `constant`) with a warning; every schedule has the driver's learning rates (`pact.training.schedule`).
    The loss is on the completion (each assistant answer): `completion_only_loss` must not be `False`;
    `packing` and `padding_free` are refused (each sample keeps its two views), and so is
    `dataset_kwargs={"skip_prepare_dataset": True}` (PACTTrainer builds the two views itself).
    """

    safety_tokens: str | None = field(default=None, metadata={"help": "tokens.json of `pact identify` (required)."})
    pact_backend: str = field(default="auto", metadata={"help": "pact_kernels backend: auto | torch | triton | "
                                                                "cuda | naive."})

    #: The paper's optimisation (§4.1) and the driver's defaults, for :meth:`paper`.
    PAPER_DEFAULTS = {"learning_rate": 3e-5, "num_train_epochs": 3.0, "per_device_train_batch_size": 2,
                      "max_length": 512, "lr_scheduler_type": "constant"}

    @classmethod
    def paper(cls, **kwargs) -> "PACTTrainerConfig":
        """The config with the paper's optimisation (:attr:`PAPER_DEFAULTS`: lr 3e-5, 3 epochs, micro-batch 2,
        ``max_length`` 512, constant schedule) where ``kwargs`` does not set them; the rest as ``cls(**kwargs)``."""
        return cls(**{**cls.PAPER_DEFAULTS, **kwargs})

    def __post_init__(self):
        super().__post_init__()
        self._warm_up_the_constant_schedule()
        if self.deepspeed:
            self._refill_deepspeed_config()
        if not self.safety_tokens:
            raise ValueError("PACTTrainerConfig: safety_tokens is not set; pass the tokens.json of `pact identify` "
                             "(see pact.identify.identify for doing it from Python)")
        if not Path(self.safety_tokens).is_file():
            raise ValueError(f"PACTTrainerConfig: safety_tokens file not found: {self.safety_tokens}")
        try:
            self.method, self.variant = split_method(self.method, self.variant)
        except ValueError as e:
            raise ValueError(f"PACTTrainerConfig: {e}") from None
        if self.method not in TRAINER_METHODS:
            raise ValueError(f"PACTTrainerConfig: method={self.method!r}; use one of {', '.join(TRAINER_METHODS)} "
                             "(safe_lora and asft need the base model's weights: run them with `pact train`)")
        unused = self.unused_pact_keys() + ["ref_cache"] * (self.method != "pact" and bool(self.ref_cache))
        if unused:  # PACT's keys given to a baseline: a mistake, never ignored silently
            raise ValueError(f"PACTTrainerConfig: method={self.method!r} does not use {', '.join(unused)}; "
                             "leave them unset or use method='pact'")
        try:
            self.check_objective(sep="; ")
            config = self.loss_config()
        except ValueError as e:
            raise ValueError(f"PACTTrainerConfig: {e}") from e
        if self.ref_cache and config.variant == "full_vocab":
            raise ValueError("PACTTrainerConfig: ref_cache holds K-token reference logits; variant='full_vocab' "
                             "needs the full vocabulary: leave ref_cache unset")
        if self.completion_only_loss is False:
            raise ValueError("PACTTrainerConfig: completion_only_loss=False; PACT's loss is on the completion "
                             "(its two views share only the answer tokens): leave it unset")
        if (self.dataset_kwargs or {}).get("skip_prepare_dataset"):
            raise ValueError("PACTTrainerConfig: dataset_kwargs={'skip_prepare_dataset': True}; PACTTrainer builds "
                             "each sample's two views from a TRL-format dataset itself: leave skip_prepare_dataset "
                             "unset")
        if self.packing or self.padding_free:
            raise ValueError("PACTTrainerConfig: packing / padding_free merge samples; PACT needs each sample's "
                             "two views: set packing=False, padding_free=False")

    def _warm_up_the_constant_schedule(self) -> None:
        """``constant`` with a warm-up becomes ``constant_with_warmup``, saying so.

        ``transformers``' ``constant`` schedule ignores ``warmup_steps``; the driver's ``constant``
        (the default of :meth:`paper`) warms up. Switched, both step with the same learning rates
        (``pact.training.schedule``).
        """
        from transformers.trainer_utils import SchedulerType

        warm = self.warmup_steps or getattr(self, "warmup_ratio", 0) or 0
        if warm > 0 and SchedulerType(self.lr_scheduler_type) == SchedulerType.CONSTANT:
            warnings.warn(f"PACTTrainerConfig: lr_scheduler_type='constant' would ignore warmup_steps={warm} in "
                          "transformers; using 'constant_with_warmup' (the driver's constant schedule with "
                          "warm-up). Set lr_scheduler_type='constant_with_warmup' to silence this.", stacklevel=3)
            self.lr_scheduler_type = SchedulerType.CONSTANT_WITH_WARMUP

    def _refill_deepspeed_config(self) -> None:
        """Fill DeepSpeed's ``"auto"`` batch sizes again once the processes are known.

        ``TrainingArguments`` fills them before it sets up the devices, with one
        process (seen on CPU under the ``deepspeed`` launcher: ``train_batch_size``
        then disagrees with the ranks); the devices are set up here first.
        """
        from accelerate.utils import DeepSpeedPlugin
        from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

        _ = self._setup_devices
        self.hf_deepspeed_config = HfTrainerDeepSpeedConfig(self.deepspeed)
        self.hf_deepspeed_config.trainer_config_process(self)
        self.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=self.hf_deepspeed_config)
