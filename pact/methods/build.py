"""``method=`` -> the objective: one factory for the driver (``pact/train.py``) and :class:`pact.trl.PACTTrainer`."""
from __future__ import annotations

from .asft import ASFT
from .base import PACT, SFT, Method
from .constrained_sft import ConstrainedSFT
from .safe_lora import SafeLoRA

#: ``method=`` -> its class: every objective, in the order error messages list them.
METHOD_CLASSES: dict[str, type[Method]] = {"pact": PACT, "sft": SFT, "constrained_sft": ConstrainedSFT,
                                           "safe_lora": SafeLoRA, "asft": ASFT}
#: The methods :class:`pact.trl.PACTTrainer` trains with: those that need no base model's weights.
TRAINER_METHODS = tuple(name for name, cls in METHOD_CLASSES.items() if not cls.needs_base_model)


def build_method(cfg, tokens, backend: str = "auto") -> Method:
    """The objective of ``cfg.method`` with its hyper-parameters from ``cfg``.

    ``cfg``: the driver's ``TrainConfig`` or a ``PACTTrainerConfig`` (both are
    :class:`~pact.training.settings.ObjectiveSettings`: ``method``, ``csft_*``, ``loss_config()``; ``safe_lora``
    and ``asft`` read the driver's model keys). ``tokens``: the :class:`~pact.identify.SafetyTokens`
    (needed by ``pact``). ``method="pact"`` trains the rung ``cfg.variant`` (in ``cfg.loss_config()``).
    """
    if cfg.method == "sft":
        return SFT()
    if cfg.method == "constrained_sft":
        return ConstrainedSFT(cfg.csft_beta, cfg.csft_bias_factor, cfg.csft_first_token_bias_factor,
                              cfg.csft_bias_length, cfg.csft_min_weight)
    if cfg.method == "safe_lora":
        return SafeLoRA(cfg.model, cfg.base_model, gguf_file=cfg.gguf_file, base_gguf_file=cfg.base_gguf_file,
                        select=cfg.safe_lora_select, threshold=cfg.safe_lora_threshold,
                        num_layers=cfg.safe_lora_num_layers, round_decimals=cfg.safe_lora_round,
                        ties=cfg.safe_lora_ties, dtype=cfg.alignment_dtype)
    if cfg.method == "asft":
        return ASFT(cfg.base_model, base_gguf_file=cfg.base_gguf_file, lambda_=cfg.asft_lambda,
                    dtype=cfg.alignment_dtype, scale=cfg.asft_scale,
                    gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    if cfg.method != "pact":
        raise ValueError(f"method={cfg.method!r} is unknown; use one of sft, constrained_sft, safe_lora, asft, pact")
    return PACT(cfg.loss_config(), tokens.ids_tensor(), tokens.weights_tensor(), backend=backend)
